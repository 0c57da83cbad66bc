// WebSocket framing and handshake checks on bytes (_ws_frame.ts).
import assert from "node:assert/strict";
import {
  acceptKey,
  asksForWebSocket,
  closePayload,
  encodeFrame,
  Op,
  parseClose,
  parseFrame,
  webSocketProblem,
  WebSocketProtocolError,
} from "../_ws_frame.ts";

const enc = new TextEncoder();

Deno.test("acceptKey gives RFC 6455's example answer", async () => {
  // RFC 6455 §1.3.
  assert.equal(
    await acceptKey("dGhlIHNhbXBsZSBub25jZQ=="),
    "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
  );
});

Deno.test("encodeFrame uses the 7-bit, 16-bit and 64-bit lengths at their bounds", () => {
  for (
    const [n, head] of [[0, 2], [125, 2], [126, 4], [65535, 4], [65536, 10]]
  ) {
    const payload = new Uint8Array(n).map((_, i) => i & 0xff);
    const frame = encodeFrame(Op.binary, payload, null);
    assert.equal(frame.length, head + n, `length ${n}`);
    assert.equal(frame[0], 0x82);
    const parsed = parseFrame(frame, 0, frame.length, Infinity);
    assert.ok(parsed !== null);
    assert.equal(parsed.used, frame.length);
    assert.deepEqual(parsed.frame.payload, payload);
    assert.equal(parsed.frame.fin, true);
  }
});

Deno.test("a masked frame reads back to its payload, and the mask is on the wire", () => {
  const payload = enc.encode("Hello");
  const mask = new Uint8Array([0x37, 0xfa, 0x21, 0x3d]);
  const frame = encodeFrame(Op.text, payload, mask);
  // RFC 6455 §5.7: a masked "Hello".
  assert.deepEqual(
    [...frame],
    [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58],
  );
  assert.deepEqual([...payload], [...enc.encode("Hello")]); // not changed
  const parsed = parseFrame(frame, 0, frame.length, 100, true);
  assert.equal(new TextDecoder().decode(parsed!.frame.payload), "Hello");
  // A client must not read masked frames from a server, nor a server
  // unmasked ones from a client.
  assert.throws(() => parseFrame(frame, 0, frame.length, 100), /masked/);
  const plain = encodeFrame(Op.text, payload, null);
  assert.throws(
    () => parseFrame(plain, 0, plain.length, 100, true),
    /not masked/,
  );
});

Deno.test("parseFrame wants more bytes for every cut of a frame", () => {
  const frame = encodeFrame(Op.binary, new Uint8Array(300), null, false);
  for (let cut = 0; cut < frame.length; cut++) {
    assert.equal(parseFrame(frame, 0, cut, Infinity), null, `cut at ${cut}`);
  }
  const two = new Uint8Array(frame.length + 2);
  two.set(frame);
  two.set([0x89, 0x00], frame.length); // a ping after it
  const first = parseFrame(two, 0, two.length, Infinity)!;
  assert.equal(first.frame.fin, false);
  const second = parseFrame(two, first.used, two.length, Infinity)!;
  assert.equal(second.frame.opcode, Op.ping);
  assert.equal(first.used + second.used, two.length);
});

Deno.test("parseFrame refuses what RFC 6455 forbids, with the close code to send", () => {
  const cases: [number[], number, RegExp][] = [
    [[0xc1, 0x00], 1002, /reserved/], // RSV1 without an extension
    [[0x83, 0x00], 1002, /opcode 3/],
    [[0x09, 0x00], 1002, /control frame/], // a fragmented ping
    [[0x88, 0x7e, 0x00, 0x7e], 1002, /control frame/], // a 126-byte close
    [[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0], 1002, /top bit/],
    [[0x82, 0x7e, 0x01, 0x00], 1009, /over the limit of 255/],
  ];
  for (const [bytes, code, message] of cases) {
    const buf = new Uint8Array(bytes);
    assert.throws(
      () => parseFrame(buf, 0, buf.length, 255),
      (e: unknown) =>
        e instanceof WebSocketProtocolError && e.code === code &&
        message.test(e.message),
      `${bytes}`,
    );
  }
});

Deno.test("close payloads: code and reason, cut to 125 bytes on a character boundary", () => {
  assert.deepEqual(closePayload(), new Uint8Array(0));
  assert.deepEqual(parseClose(closePayload(4001, "bye")), {
    code: 4001,
    reason: "bye",
  });
  const long = closePayload(1000, "é".repeat(100)); // 200 bytes of UTF-8
  assert.equal(long.length, 2 + 122);
  assert.equal(parseClose(long).reason, "é".repeat(61));
  assert.deepEqual(parseClose(new Uint8Array(0)), {
    code: undefined,
    reason: "",
  });
  assert.throws(() => parseClose(new Uint8Array([3])), /one byte/);
  assert.throws(() => parseClose(new Uint8Array([0x03, 0xed])), /1005/);
  assert.throws(
    () => parseClose(new Uint8Array([0x03, 0xe8, 0xff])),
    (e: unknown) => e instanceof WebSocketProtocolError && e.code === 1007,
  );
});

function handshake(init: Record<string, string>, method = "GET"): Request {
  return new Request("http://hub/ws", {
    method,
    headers: {
      connection: "keep-alive, Upgrade",
      upgrade: "websocket",
      "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
      "sec-websocket-version": "13",
      ...init,
    },
  });
}

Deno.test("the opening handshake is checked as RFC 6455 §4.2.1 asks", () => {
  assert.equal(asksForWebSocket(handshake({})), true);
  assert.equal(
    asksForWebSocket(handshake({ upgrade: "h2c, WebSocket" })),
    true,
  );
  assert.equal(asksForWebSocket(handshake({ upgrade: "h2c" })), false);
  assert.equal(webSocketProblem(handshake({})), null);
  assert.equal(webSocketProblem(handshake({}, "POST"))?.[0], 400);
  // (Deno.serve refuses such a GET itself; the hub's check is for other servers.)
  assert.deepEqual(webSocketProblem(handshake({ "content-length": "5" })), [
    400,
    "a WebSocket handshake has no body",
  ]);
  assert.equal(
    webSocketProblem(handshake({ "transfer-encoding": "chunked" }))?.[0],
    400,
  );
  assert.equal(webSocketProblem(handshake({ "content-length": "0" })), null);
  assert.equal(webSocketProblem(handshake({ connection: "close" }))?.[0], 400);
  assert.equal(
    webSocketProblem(handshake({ "sec-websocket-key": "short" }))?.[0],
    400,
  );
  assert.deepEqual(
    webSocketProblem(handshake({ "sec-websocket-version": "8" })),
    [426, "this hub speaks WebSocket version 13", {
      "sec-websocket-version": "13",
    }],
  );
});

Deno.test("masking a word at a time matches masking byte by byte, for every length near the word edges", () => {
  const mask = new Uint8Array([0x12, 0x34, 0x56, 0x78]);
  for (
    const n of [0, 1, 2, 3, 4, 5, 7, 8, 125, 126, 127, 65535, 65536, 65539]
  ) {
    const payload = new Uint8Array(n).map((_, i) => (i * 31 + 7) & 0xff);
    const frame = encodeFrame(Op.binary, payload, mask);
    const head = frame.length - n;
    for (let i = 0; i < n; i++) {
      if (frame[head + i] !== (payload[i] ^ mask[i & 3])) {
        assert.fail(`length ${n}: byte ${i} masked wrong`);
      }
    }
    assert.deepEqual(frame.subarray(head - 4, head), mask);
    assert.deepEqual(
      parseFrame(frame, 0, frame.length, Infinity, true)!.frame.payload,
      payload,
    );
  }
});

Deno.test("parseClose keeps a reason's leading U+FEFF (text, not a byte order mark)", () => {
  assert.deepEqual(parseClose(closePayload(1000, "\uFEFFbye")), {
    code: 1000,
    reason: "\uFEFFbye",
  });
});
