/**
 * The hub's side of one worker connection, on bytes: what a slot writes for
 * each kind of request, and that a pre-encoded head is reused as is.
 */

import assert from "node:assert/strict";
import { DEFAULT_LIMITS } from "../_codec.ts";
import {
  type OutgoingRequest,
  requestLines,
  type SlotOptions,
  type WorkerLinkError,
  WorkerSlot,
} from "../_slot.ts";
import { WAIT_REQUEST } from "../_park.ts";
import { ScriptedConn, text } from "./_memconn.ts";

function slotOn(
  conn: ScriptedConn,
  events: string[] = [],
  more: Partial<SlotOptions> = {},
): WorkerSlot {
  const options: SlotOptions = {
    limits: DEFAULT_LIMITS,
    headTimeout: 0,
    maxBodySize: Infinity,
    smallBody: 64 * 1024,
    onIdle: () => events.push("idle"),
    onClose: (_slot, reason) => events.push(`close: ${String(reason)}`),
    ...more,
  };
  const slot = new WorkerSlot(conn, "test", options);
  slot.idle(false);
  return slot;
}

const OK = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

function request(over: Partial<OutgoingRequest> = {}): OutgoingRequest {
  return {
    method: "GET",
    target: "/a?b=1",
    headers: [["host", "example.test"], ["x-one", "1"]],
    body: null,
    contentLength: 0,
    ...over,
  };
}

Deno.test("slot writes a bodiless request as one head with the extra fields last", async () => {
  const conn = new ScriptedConn([OK]);
  const res = await slotOn(conn).send({
    ...request(),
    extraHeaders: [["x-pothead-queue-ms", "1.5"]],
  });
  assert.equal(res.status, 200);
  assert.equal(conn.writes.length, 1);
  assert.equal(
    text(conn.written),
    "GET /a?b=1 HTTP/1.1\r\nhost: example.test\r\nx-one: 1\r\n" +
      "x-pothead-queue-ms: 1.5\r\n\r\n",
  );
});

Deno.test("slot writes a bytes body in the same write as its head, with Content-Length", async () => {
  const conn = new ScriptedConn([OK]);
  await slotOn(conn).send(request({
    method: "POST",
    body: new TextEncoder().encode("hello"),
    contentLength: 5,
  }));
  assert.equal(conn.writes.length, 1);
  assert.equal(
    text(conn.written),
    "POST /a?b=1 HTTP/1.1\r\nhost: example.test\r\nx-one: 1\r\n" +
      "content-length: 5\r\n\r\nhello",
  );
});

Deno.test("slot announces a stream body with 100-continue and its framing, then sends it when asked", async () => {
  for (
    const [length, framing, body] of [
      [3, "content-length: 3", "abc"],
      [-1, "transfer-encoding: chunked", "3\r\nabc\r\n0\r\n\r\n"],
    ] as const
  ) {
    const conn = new ScriptedConn(["HTTP/1.1 100 Continue\r\n\r\n", OK]);
    const res = await slotOn(conn).send(request({
      method: "PUT",
      body: ReadableStream.from([new TextEncoder().encode("abc")]),
      contentLength: length,
    }));
    assert.equal(res.status, 200);
    // The body pump runs after 100 Continue; let it finish.
    for (let i = 0; i < 20 && !text(conn.written).endsWith(body); i++) {
      await new Promise((r) => setTimeout(r, 1));
    }
    assert.equal(
      text(conn.written),
      "PUT /a?b=1 HTTP/1.1\r\nhost: example.test\r\nx-one: 1\r\n" +
        `expect: 100-continue\r\n${framing}\r\n\r\n${body}`,
    );
  }
});

Deno.test("slot sends a stream body at once and without Expect when told the worker does not answer it, and reports what it saw", async () => {
  for (const answers100 of [false, true]) {
    const conn = new ScriptedConn(
      answers100 ? ["HTTP/1.1 100 Continue\r\n\r\n", OK] : [OK],
    );
    const seen: boolean[] = [];
    const slot = slotOn(conn, [], {
      onContinueSeen: (_slot, saw) => seen.push(saw),
    });
    const res = await slot.send(request({
      method: "PUT",
      body: ReadableStream.from([new TextEncoder().encode("abc")]),
      contentLength: 3,
      expectContinue: false,
    }));
    assert.equal(res.status, 200);
    for (let i = 0; i < 20 && !text(conn.written).endsWith("abc"); i++) {
      await new Promise((r) => setTimeout(r, 1));
    }
    assert.equal(
      text(conn.written),
      "PUT /a?b=1 HTTP/1.1\r\nhost: example.test\r\nx-one: 1\r\n" +
        "content-length: 3\r\n\r\nabc",
    );
    assert.deepEqual(seen, [answers100]);
  }
});

Deno.test("a pre-encoded request head is reused as is and only the extra fields change", async () => {
  const req = request();
  const lines = requestLines(req);
  assert.equal(
    lines,
    "GET /a?b=1 HTTP/1.1\r\nhost: example.test\r\nx-one: 1\r\n",
  );
  req.headers.push(["x-late", "1"]);
  assert.equal(requestLines(req), lines, "cached on the request");
  // Changing the fields afterwards does not change what is sent: the
  // cached lines are the request's encoded form from then on.
  const first = new ScriptedConn([OK]);
  await slotOn(first).send({ ...req, extraHeaders: [["x-q", "1"]] });
  const second = new ScriptedConn([OK]);
  await slotOn(second).send({ ...req, extraHeaders: [["x-q", "22"]] });
  assert.equal(
    text(first.written),
    "GET /a?b=1 HTTP/1.1\r\nhost: example.test\r\nx-one: 1\r\nx-q: 1\r\n\r\n",
  );
  assert.equal(
    text(second.written),
    "GET /a?b=1 HTTP/1.1\r\nhost: example.test\r\nx-one: 1\r\nx-q: 22\r\n\r\n",
  );
});

Deno.test("a slot made idle without a watch still refuses bytes left after a response", async () => {
  const events: string[] = [];
  // The worker sends two responses for one request.
  const conn = new ScriptedConn([OK + OK]);
  const slot = slotOn(conn, events);
  const res = await slot.send(request());
  assert.equal(res.status, 200);
  assert.deepEqual(events, ["idle"]);
  slot.idle(false);
  assert.equal(slot.state, "closed");
  assert.match(events[1], /sent bytes after its response/);
  assert.equal(conn.closed, true);
});

Deno.test("a hand-back 408 in the same read as the last response closes the slot as given back, not as a protocol error", async () => {
  for (const watch of [false, true]) {
    const reasons: unknown[] = [];
    const conn = new ScriptedConn([
      OK + "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1\r\n" +
      "connection: close\r\ncontent-length: 0\r\n\r\n",
    ]);
    const slot = slotOn(conn, [], {
      onClose: (_slot, reason) => reasons.push(reason),
    });
    const res = await slot.send(request());
    assert.equal(res.status, 200);
    slot.idle(watch);
    assert.equal(slot.state, "closed");
    assert.equal(reasons.length, 1);
    const reason = reasons[0] as WorkerLinkError;
    assert.equal(reason.code, "closed");
    assert.match(reason.message, /gave the connection back/);
  }
});

Deno.test("a slot made idle without a watch does not read until the next request", async () => {
  const conn = new ScriptedConn([OK, OK]);
  const slot = slotOn(conn);
  await slot.send(request());
  const reads = conn.reads;
  slot.idle(false);
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(conn.reads, reads, "no read while idle without a watch");
  assert.equal(slot.state, "idle");
  const res = await slot.send(request());
  assert.equal(res.status, 200);
  assert.equal(conn.reads, reads + 1);
});

// Parking (`_park.ts`): a slot the worker parks sends the wait request and
// is idle again only after the worker answers it.
const PARKED_408 =
  "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1\r\n" +
  "connection: pothead-park\r\ncontent-length: 0\r\n\r\n";
const READY = "HTTP/1.1 204 No Content\r\n\r\n";

function parkingSlot(conn: ScriptedConn, events: string[]): WorkerSlot {
  const slot = new WorkerSlot(conn, "test", {
    limits: DEFAULT_LIMITS,
    headTimeout: 0,
    maxBodySize: Infinity,
    smallBody: 64 * 1024,
    onIdle: (s) => events.push(`idle (${s.state})`),
    onPark: (s) => events.push(`park (${s.state})`),
    onClose: (_slot, reason) => events.push(`close: ${String(reason)}`),
  });
  slot.idle(false);
  return slot;
}

async function settled(events: string[], n: number): Promise<void> {
  for (let i = 0; i < 200 && events.length < n; i++) {
    await new Promise((r) => setTimeout(r, 1));
  }
}

Deno.test("a declined request with the park option parks the slot: the wait request goes out and the 204 makes it idle", async () => {
  const conn = new ScriptedConn([PARKED_408, READY]);
  const events: string[] = [];
  const slot = parkingSlot(conn, events);
  await assert.rejects(slot.send(request()), (e: WorkerLinkError) => {
    assert.equal(e.code, "not-started");
    assert.equal(e.retryable, true);
    return true;
  });
  await settled(events, 2);
  assert.deepEqual(events, ["park (parked)", "idle (parked)"]);
  assert.equal(
    text(conn.written),
    "GET /a?b=1 HTTP/1.1\r\nhost: example.test\r\nx-one: 1\r\n\r\n" +
      text(WAIT_REQUEST),
  );
});

Deno.test("a response with the park option parks the slot after it; the worker giving the parked slot back closes it", async () => {
  const conn = new ScriptedConn([
    "HTTP/1.1 200 OK\r\nconnection: pothead-park\r\ncontent-length: 2\r\n\r\nok",
    "HTTP/1.1 408 Request Timeout\r\nx-pothead-not-started: 1\r\n" +
    "connection: close\r\ncontent-length: 0\r\n\r\n",
  ]);
  const events: string[] = [];
  const slot = parkingSlot(conn, events);
  const res = await slot.send(request());
  assert.equal(res.status, 200);
  assert.equal(text(res.body as Uint8Array), "ok");
  await settled(events, 2);
  assert.equal(events[0], "park (parked)");
  assert.match(events[1], /^close: .*gave a parked connection back/);
  assert.equal(slot.state, "closed");
  assert.ok(text(conn.written).endsWith(text(WAIT_REQUEST)));
});

Deno.test("without onPark the park option is ignored: the 408 closes and a response leaves the slot idle", async () => {
  const events: string[] = [];
  const declined = new ScriptedConn([PARKED_408]);
  await assert.rejects(slotOn(declined, events).send(request()));
  assert.match(events[0], /^close: /);
  assert.ok(!text(declined.written).includes("x-pothead-wait"));
  const served: string[] = [];
  const ok = new ScriptedConn([
    "HTTP/1.1 200 OK\r\nconnection: pothead-park\r\ncontent-length: 2\r\n\r\nok",
  ]);
  await slotOn(ok, served).send(request());
  assert.deepEqual(served, ["idle"]);
});

Deno.test("a declined streamed upload is never parked: its body was withheld, so the connection closes", async () => {
  const conn = new ScriptedConn([PARKED_408, READY]);
  const events: string[] = [];
  const slot = parkingSlot(conn, events);
  const body = new ReadableStream<Uint8Array>({
    pull(c) {
      c.enqueue(new Uint8Array(10));
      c.close();
    },
  });
  await assert.rejects(
    slot.send(request({ method: "POST", body, contentLength: 10 })),
    (e: WorkerLinkError) => e.code === "not-started" && e.retryable,
  );
  await settled(events, 1);
  assert.equal(events.length, 1);
  assert.match(events[0], /^close: /);
  assert.ok(!text(conn.written).includes("x-pothead-wait"));
});

Deno.test("a target with chars outside visible ASCII goes out percent-encoded as UTF-8, never as raw control bytes", async () => {
  const conn = new ScriptedConn([OK]);
  await slotOn(conn).send(request({ target: "/caf\u00e9/\u010d\u010a x" }));
  assert.equal(
    text(conn.written).split("\r\n")[0],
    "GET /caf%C3%A9/%C4%8D%C4%8A%20x HTTP/1.1",
  );
});
