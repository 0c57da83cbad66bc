import assert from "node:assert/strict";
import {
  fieldPairs,
  fieldValue,
  forwardRequestHeaders,
  type Relayed,
  relayedHeaders,
  relayedResponse,
  requestTarget,
  splitUrl,
} from "../_headers.ts";

const base: Relayed = {
  status: 200,
  reason: "OK",
  headers: [],
  contentLength: 5,
  body: new Uint8Array(5),
};

Deno.test("relayed response drops hop-by-hop fields and those Connection names", () => {
  const fields = relayedHeaders({
    ...base,
    headers: [
      ["content-type", "text/plain"],
      ["connection", "x-secret, keep-alive"],
      ["x-secret", "1"],
      ["keep-alive", "timeout=5"],
      ["transfer-encoding", "chunked"],
      ["content-length", "5"],
      ["set-cookie", "a=1"],
      ["set-cookie", "b=2"],
    ],
  }, "GET");
  assert.deepEqual(fields, [
    ["content-type", "text/plain"],
    ["set-cookie", "a=1"],
    ["set-cookie", "b=2"],
  ]);
});

Deno.test("every Connection field counts: fields named in a second one are dropped too", () => {
  const fields = relayedHeaders({
    ...base,
    headers: [
      ["connection", "x-one"],
      ["x-one", "1"],
      ["x-two", "2"],
      ["connection", "X-Two"],
      ["x-three", "3"],
    ],
  }, "GET");
  assert.deepEqual(fields, [["x-three", "3"]]);
});

Deno.test("relayed response keeps Content-Length for HEAD, 304 and streamed bodies", () => {
  const headers: [string, string][] = [["content-length", "1234"]];
  assert.deepEqual(
    relayedHeaders({ ...base, headers, body: null, contentLength: 0 }, "HEAD"),
    [["content-length", "1234"]],
  );
  assert.deepEqual(
    relayedHeaders(
      { ...base, status: 304, headers, body: null, contentLength: 0 },
      "GET",
    ),
    [["content-length", "1234"]],
  );
  assert.deepEqual(
    relayedHeaders({
      ...base,
      headers,
      body: new ReadableStream(),
      contentLength: 1234,
    }, "GET"),
    [["content-length", "1234"]],
  );
  // A bytes body: the consumer-side server frames it itself.
  assert.deepEqual(relayedHeaders({ ...base, headers }, "GET"), []);
});

Deno.test("forwarded request replaces client-supplied forwarding fields unless trusted", () => {
  const headers = new Headers([
    ["host", "example.test"],
    ["x-forwarded-for", "10.9.9.9"],
    ["x-request-id", "theirs"],
    ["te", "trailers"],
  ]);
  const info = {
    clientIp: "192.0.2.1",
    proto: "http",
    host: "example.test",
    requestId: "ours",
  };
  const plain = forwardRequestHeaders(headers, {
    ...info,
    trustForwarded: false,
  });
  assert.deepEqual(plain, [
    ["host", "example.test"],
    ["x-forwarded-for", "192.0.2.1"],
    ["x-forwarded-proto", "http"],
    ["x-forwarded-host", "example.test"],
    ["x-request-id", "ours"],
  ]);
  const trusted = forwardRequestHeaders(headers, {
    ...info,
    trustForwarded: true,
  });
  assert.deepEqual(
    trusted.find(([n]) => n === "x-forwarded-for"),
    ["x-forwarded-for", "10.9.9.9, 192.0.2.1"],
  );
});

Deno.test("trusted X-Forwarded-* fields with an empty last line are taken without it", () => {
  // "x-forwarded-proto: https" then "x-forwarded-proto:" is "https, " in
  // Deno.serve's Headers: the hub's own field must say "https", and the
  // chain must not get an empty element.
  const headers = new Headers([["host", "example.test"]]);
  for (
    const [name, value] of [
      ["x-forwarded-proto", "https"],
      ["x-forwarded-proto", ""],
      ["x-forwarded-for", "10.9.9.9"],
      ["x-forwarded-for", ""],
      ["x-forwarded-host", "front.test"],
      ["x-forwarded-host", ""],
    ]
  ) headers.append(name, value);
  const out = forwardRequestHeaders(headers, {
    clientIp: "192.0.2.1",
    proto: "http",
    host: "example.test",
    requestId: "ours",
    trustForwarded: true,
  });
  assert.deepEqual(out.filter(([n]) => n.startsWith("x-forwarded-")), [
    ["x-forwarded-for", "10.9.9.9, 192.0.2.1"],
    ["x-forwarded-proto", "https"],
    ["x-forwarded-host", "front.test"],
  ]);
});

Deno.test("forwarded request drops the link protocol's fields a consumer sent", () => {
  const headers = new Headers([
    ["host", "example.test"],
    ["x-pothead-ping", "1"],
    ["x-pothead-wait", "1"],
    ["x-pothead-queue-ms", "99999"],
    ["x-pothead-anything", "1"],
    ["x-potheadless", "kept"],
  ]);
  const out = forwardRequestHeaders(headers, {
    clientIp: "192.0.2.1",
    proto: "http",
    host: "example.test",
    requestId: "ours",
    trustForwarded: true,
  });
  assert.deepEqual(out.filter(([n]) => n.startsWith("x-pothead")), [
    ["x-potheadless", "kept"],
  ]);
});

Deno.test("forwarded request keeps a repeated field whose last value is empty", () => {
  // Deno.serve's Headers for "x-a: one" then "x-a:" is "one, "; the worker
  // must see that too, not "one," (the wire trims a value's edges).
  const repeats: Record<string, string[]> = {
    "x-a": ["one", ""],
    "x-b": ["one", "", ""],
    "x-c": ["", "one", ""],
    "x-d": ["one", "", "two", ""],
    "x-e": ["", ""],
  };
  const headers = new Headers([["host", "example.test"]]);
  for (const [name, values] of Object.entries(repeats)) {
    for (const value of values) headers.append(name, value);
  }
  assert.equal(headers.get("x-a"), "one, ");
  const out = forwardRequestHeaders(headers, {
    clientIp: "192.0.2.1",
    proto: "http",
    host: "example.test",
    requestId: "ours",
    trustForwarded: false,
  });
  assert.ok(out.every(([, v]) => v === v.trim()), JSON.stringify(out));
  // What the worker's Headers (either engine) make of those field lines,
  // as a handler iterates them. (Deno's `get` differs from its iteration
  // when the first value is empty: ", one" against "one". The hub reads
  // fields by iteration, so that is what it can keep.)
  const repeated = (h: Headers) => [...h].filter(([n]) => n in repeats);
  assert.deepEqual(repeated(new Headers(out)), repeated(headers));
});

Deno.test("relayed Response: the relayer's own fields replace the worker's, appended ones add", async () => {
  const res = relayedResponse(
    {
      ...base,
      status: 201,
      headers: [
        ["x-request-id", "theirs"],
        ["server-timing", "db;dur=3"],
        ["content-type", "text/plain"],
      ],
    },
    "GET",
    [["x-request-id", "ours"]],
    [["server-timing", "queue;dur=1"]],
  );
  assert.equal(res.status, 201);
  assert.equal(res.headers.get("x-request-id"), "ours");
  assert.equal(res.headers.get("server-timing"), "db;dur=3, queue;dur=1");
  assert.equal(res.headers.get("content-type"), "text/plain");
  assert.equal((await res.bytes()).length, 5);
});

Deno.test("relayed Response that cannot be made throws and cancels the body stream", async () => {
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    cancel() {
      cancelled = true;
    },
  });
  assert.throws(
    () => relayedResponse({ ...base, status: 700, body }, "GET"),
    RangeError,
  );
  await Promise.resolve();
  assert.ok(cancelled);
});

Deno.test("fieldPairs reads Headers in their own order: sorted, lower-case, combined, Set-Cookie apart", () => {
  const headers = new Headers([
    ["Set-Cookie", "a=1"],
    ["X-B", "2"],
    ["set-cookie", "b=2"],
    ["x-b", "3"],
    ["Connection", "x-b"],
  ]);
  const pairs = fieldPairs(headers);
  assert.deepEqual(pairs, [
    ["connection", "x-b"],
    ["set-cookie", "a=1"],
    ["set-cookie", "b=2"],
    ["x-b", "2, 3"],
  ]);
  assert.deepEqual(pairs, [...headers], "same as the iterator");
  assert.equal(fieldValue(pairs, "set-cookie"), "a=1");
  assert.equal(fieldValue(pairs, "x-b"), "2, 3");
  assert.equal(fieldValue(pairs, "X-B"), null, "names are lower-case");
  assert.equal(fieldValue(pairs, "host"), null);
});

Deno.test("splitUrl: the authority ends at /, ? or #; the path is origin form", () => {
  assert.deepEqual(splitUrl("http://h:8080/a/b?c=d"), {
    authority: "h:8080",
    path: "/a/b?c=d",
  });
  assert.deepEqual(splitUrl("http://h"), { authority: "h", path: "/" });
  // Absolute-form targets as Deno.serve keeps them: raw, maybe no path.
  assert.deepEqual(splitUrl("HTTP://h:8080?q"), {
    authority: "h:8080",
    path: "/?q",
  });
  assert.deepEqual(splitUrl("http://h#f"), { authority: "h", path: "/" });
  assert.deepEqual(splitUrl("http://[::1]:81/x"), {
    authority: "[::1]:81",
    path: "/x",
  });
});

Deno.test("requestTarget: an absolute-form target's authority is the host, the Host field is ignored", () => {
  // Origin form: Deno.serve wrote the Host field into the URL as sent.
  assert.deepEqual(requestTarget("http://A.Example:80/p?q", "A.Example:80"), {
    authority: "A.Example:80",
    path: "/p?q",
    host: "A.Example:80",
    absolute: false,
  });
  // No Host field: the URL's authority (Deno.serve's own address).
  assert.equal(
    requestTarget("http://localhost:8080/p", null).host,
    "localhost:8080",
  );
  // An empty Host field stays empty (RFC 9112 §3.2).
  assert.equal(requestTarget("http://localhost:8080/p", "").host, "");
  // Absolute form (RFC 9112 §3.2.2).
  assert.deepEqual(requestTarget("http://b.example:81/x?y", "a.example"), {
    authority: "b.example:81",
    path: "/x?y",
    host: "b.example:81",
    absolute: true,
  });
  assert.deepEqual(requestTarget("http://b.example?y", "b.example:80"), {
    authority: "b.example",
    path: "/?y",
    host: "b.example",
    absolute: true,
  });
  assert.equal(
    requestTarget("http://u:p@b.example/x", "b.example").host,
    "u:p@b.example",
  );
});
