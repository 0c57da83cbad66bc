// The standard Forwarded field (RFC 7239) on strings: its syntax, its
// nodes, the consumer behind trusted proxies, and the element the hub
// appends when it forwards a request.

import assert from "node:assert/strict";
import {
  forwardedElement,
  forwardedFieldClient,
  lastForwardedAddress,
  nodeAddress,
  parseForwarded,
} from "../_forwarded.ts";
import { forwardedClient, parseAddressRange } from "../_address.ts";
import { forwardRequestHeaders } from "../_headers.ts";

// Elements as plain objects (null for a malformed one), to compare.
function parsed(value: string): (Record<string, string> | null)[] {
  return parseForwarded(value).map((e) => e && Object.fromEntries(e));
}

Deno.test("parseForwarded: elements on commas, parameters on semicolons, outside quoted strings", () => {
  const cases: [string, (Record<string, string> | null)[]][] = [
    // RFC 7239 §4's example: several elements, several parameters.
    [
      "for=192.0.2.43, for=198.51.100.17;by=203.0.113.60;proto=http;host=example.com",
      [
        { for: "192.0.2.43" },
        {
          for: "198.51.100.17",
          by: "203.0.113.60",
          proto: "http",
          host: "example.com",
        },
      ],
    ],
    // Names are case-insensitive, values are not.
    ["For=192.0.2.1;PROTO=HTTPS", [{ for: "192.0.2.1", proto: "HTTPS" }]],
    // Quoted values: IPv6 with and without a port, IPv4 with a port.
    [
      'for="[2001:db8:cafe::17]:4711", for="[2001:db8::1]", for="192.0.2.1:80"',
      [
        { for: "[2001:db8:cafe::17]:4711" },
        { for: "[2001:db8::1]" },
        { for: "192.0.2.1:80" },
      ],
    ],
    // "," and ";" inside a quoted string split nothing.
    [
      'for="a,b;c";host="x, y", for=192.0.2.2',
      [{ for: "a,b;c", host: "x, y" }, { for: "192.0.2.2" }],
    ],
    // Escapes: the escaped character stands for itself.
    [String.raw`host="a\"b\\c\d"`, [{ host: String.raw`a"b\cd` }]],
    [String.raw`host="\,", for=192.0.2.3`, [{ host: "," }, {
      for: "192.0.2.3",
    }]],
    // Empty list elements are no elements; empty pairs are allowed.
    [" , ,for=192.0.2.4,, ", [{ for: "192.0.2.4" }]],
    ["for=192.0.2.5;;proto=http;", [{ for: "192.0.2.5", proto: "http" }]],
    [";", [{}]],
    // Space around ";" and "," (some proxies write "; ").
    [
      "for=192.0.2.6 ; proto=http\t,\tfor=192.0.2.7",
      [{ for: "192.0.2.6", proto: "http" }, { for: "192.0.2.7" }],
    ],
    ["", []],
  ];
  for (const [value, expected] of cases) {
    assert.deepEqual(parsed(value), expected, value);
  }
});

Deno.test("parseForwarded: a malformed element is null, and only it", () => {
  const cases: [string, (Record<string, string> | null)[]][] = [
    ["garbage, for=192.0.2.1", [null, { for: "192.0.2.1" }]],
    ["for = 192.0.2.1", [null]],
    ["for=192.0.2.1 proto=http, for=192.0.2.2", [null, { for: "192.0.2.2" }]],
    ["for=", [null]],
    ["for=;proto=http", [null]],
    ["=192.0.2.1", [null]],
    ["for", [null]],
    ["for=[::1]", [null]], // brackets are not token characters
    ['for="192.0.2.1"x, for=192.0.2.2', [null, { for: "192.0.2.2" }]],
    // A name twice: which would count?
    ["for=192.0.2.1;FOR=192.0.2.9", [null]],
    // Bad text with a quoted string in it: its "," splits nothing.
    ['x y"a, b", for=192.0.2.2', [null, { for: "192.0.2.2" }]],
    // A quote that never closes spoils its own element only: a consumer's
    // stray quote does not swallow what trusted proxies appended after it.
    ['for=", for=127.0.0.3', [null, { for: "127.0.0.3" }]],
    ['for="\\", for=127.0.0.3', [null, { for: "127.0.0.3" }]],
    ['"', [null]],
    ['for="192.0.2.1', [null]],
    [String.raw`for="192.0.2.1\"`, [null]],
  ];
  for (const [value, expected] of cases) {
    assert.deepEqual(parsed(value), expected, value);
  }
});

Deno.test("parseForwarded: a very long field takes linear time, whatever it holds", () => {
  const size = 1 << 20;
  const shapes = [
    "for=192.0.2.1, ",
    '"',
    '\\"',
    ',"',
    'for="a\\"b",',
    'for="a",',
    "for=192.0.2.1;",
    '=" ,',
    ";",
    "x",
  ];
  for (const shape of shapes) {
    const value = shape.repeat(Math.ceil(size / shape.length));
    const start = performance.now();
    parseForwarded(value);
    const took = performance.now() - start;
    // Linear is milliseconds here; time squared on a MiB is hours. The
    // bound only tells the two apart, on a loaded machine too.
    assert.ok(took < 5_000, `${JSON.stringify(shape)}: ${took} ms`);
  }
  // And the elements are all there.
  const many = "for=192.0.2.1, ".repeat(100_000);
  assert.equal(parseForwarded(many).length, 100_000);
});

Deno.test("nodeAddress: IPv4 or bracketed IPv6, with or without a port; nothing else", () => {
  const cases: [string, string | null][] = [
    ["192.0.2.43", "192.0.2.43"],
    ["192.0.2.43:47011", "192.0.2.43"],
    ["192.0.2.43:_port", "192.0.2.43"],
    ["[2001:db8:cafe::17]", "2001:db8:cafe::17"],
    ["[2001:db8:cafe::17]:4711", "2001:db8:cafe::17"],
    ["[::ffff:192.0.2.1]:_x.y-z", "::ffff:192.0.2.1"],
    // Unknown and obfuscated nodes name no address.
    ["unknown", null],
    ["unknown:80", null],
    ["_hidden", null],
    ["_SEVKISEK", null],
    ["[_hidden]", null],
    // Not nodes RFC 7239 writes.
    ["2001:db8::1", null],
    ["[192.0.2.1]", null],
    ["[2001:db8::1", null],
    ["[2001:db8::1]x", null],
    ["[2001:db8::1]:", null],
    ["[fe80::1%eth0]", null],
    ["192.0.2.1:", null],
    ["192.0.2.1:123456", null],
    ["192.0.2.1:8_0", null],
    ["192.0.2.256", null],
    ["example.com", null],
    [" 192.0.2.1", null],
    ["", null],
  ];
  for (const [node, expected] of cases) {
    assert.equal(nodeAddress(node), expected, node);
  }
});

Deno.test("forwardedFieldClient: from a trusted peer, the last for= address that is not a trusted proxy's", () => {
  const trusted = ["10.0.0.0/8", "fd00::/8"].map(parseAddressRange);
  const cases: [string | null, string | null, string | null][] = [
    // An untrusted peer is the consumer, whatever it says.
    ["203.0.113.9", "for=198.51.100.1", "203.0.113.9"],
    // A trusted proxy's word: the address it saw.
    ["10.0.0.1", "for=198.51.100.1", "198.51.100.1"],
    ["10.0.0.1", 'For="[2001:db8::5]:443"', "2001:db8::5"],
    ["fd00::1", 'for="198.51.100.1:5000";proto=https', "198.51.100.1"],
    // A chain; a forged element on the left is the consumer's own word.
    [
      "10.0.0.1",
      "for=6.6.6.6, for=198.51.100.1;proto=https, for=10.1.1.1",
      "198.51.100.1",
    ],
    [
      "10.0.0.1",
      'for=6.6.6.6, for="[2001:db8::7]", for=10.1.1.1',
      "2001:db8::7",
    ],
    // Every address a trusted proxy's: the first.
    ["10.0.0.1", "for=10.2.2.2, for=10.1.1.1", "10.2.2.2"],
    // No field, or no element: the peer.
    ["10.0.0.1", null, "10.0.0.1"],
    ["10.0.0.1", " , ", "10.0.0.1"],
    // An element that names no address ends the walk: the consumer is the
    // last address read, or the peer, never the text nor what is before.
    ["10.0.0.1", "for=198.51.100.1, for=unknown", "10.0.0.1"],
    ["10.0.0.1", "for=198.51.100.1, for=_hidden, for=10.1.1.1", "10.1.1.1"],
    ["10.0.0.1", "for=198.51.100.1, by=10.1.1.1", "10.0.0.1"],
    ["10.0.0.1", "for=198.51.100.1, ;", "10.0.0.1"],
    ["10.0.0.1", "for=198.51.100.1, garbage", "10.0.0.1"],
    ["10.0.0.1", "for=198.51.100.1, for=10.0.0.256", "10.0.0.1"],
    ["10.0.0.1", 'for=198.51.100.1, for="[fe80::1%eth0]"', "10.0.0.1"],
    // A stray quote on the left hides nothing appended after it.
    ["10.0.0.1", 'for=", for=198.51.100.1, for=10.1.1.1', "198.51.100.1"],
    [null, "for=198.51.100.1", null],
  ];
  for (const [peer, field, expected] of cases) {
    assert.equal(
      forwardedFieldClient(peer, field, trusted),
      expected,
      `${peer} ${field}`,
    );
  }
});

Deno.test("forwardedFieldClient walks as forwardedClient does on the same addresses", () => {
  // The same chains written both ways: an entry that is not an address
  // becomes a for= node that is not one.
  const trusted = ["10.0.0.0/8"].map(parseAddressRange);
  const chains = [
    ["198.51.100.1"],
    ["6.6.6.6", "198.51.100.1", "10.1.1.1"],
    ["10.2.2.2", "10.1.1.1"],
    ["198.51.100.1", "unknown"],
    ["198.51.100.1", "unknown", "10.1.1.1"],
    ["198.51.100.1", "_hidden", "10.1.1.1", "10.2.2.2"],
    ["unknown"],
  ];
  for (const chain of chains) {
    const xff = chain.join(", ");
    const standard = chain.map((a) => `for=${a}`).join(", ");
    assert.equal(
      forwardedFieldClient("10.0.0.1", standard, trusted),
      forwardedClient("10.0.0.1", xff, trusted),
      xff,
    );
  }
});

Deno.test("lastForwardedAddress: the last element's for= when it is an address", () => {
  const cases: [string | null, string | null][] = [
    ["for=198.51.100.1", "198.51.100.1"],
    ['for=6.6.6.6, for="[2001:db8::1]:80";proto=https', "2001:db8::1"],
    ["for=6.6.6.6, for=unknown", null],
    ["for=6.6.6.6, proto=https", null],
    ["for=6.6.6.6, garbage", null],
    ["for=6.6.6.6, ", "6.6.6.6"],
    ["", null],
    [null, null],
  ];
  for (const [field, expected] of cases) {
    assert.equal(lastForwardedAddress(field), expected, String(field));
  }
});

Deno.test("forwardedElement: for, proto and host, quoted where they are not tokens", () => {
  assert.equal(
    forwardedElement("192.0.2.1", "http", "example.com"),
    "for=192.0.2.1;proto=http;host=example.com",
  );
  assert.equal(
    forwardedElement("2001:db8::1", "https", "example.com:8443"),
    'for="[2001:db8::1]";proto=https;host="example.com:8443"',
  );
  assert.equal(
    forwardedElement(null, "http", ""),
    "for=unknown;proto=http",
  );
  assert.equal(
    forwardedElement("192.0.2.1", "http", 'a"b\\c'),
    String.raw`for=192.0.2.1;proto=http;host="a\"b\\c"`,
  );
  // What it writes reads back.
  const element = forwardedElement("::1", "https", "[::1]:8080");
  assert.deepEqual(parsed(element), [{
    for: "[::1]",
    proto: "https",
    host: "[::1]:8080",
  }]);
  assert.equal(nodeAddress(parseForwarded(element)[0]!.get("for")!), "::1");
});

Deno.test("forwardRequestHeaders: with appendForwarded the hub's element ends Forwarded, after a trusted one", () => {
  const headers = new Headers([
    ["host", "example.test"],
    ["forwarded", "for=198.51.100.1;proto=https"],
    ["x-forwarded-for", "198.51.100.1"],
  ]);
  const info = {
    clientIp: "10.0.0.1",
    proto: "http",
    host: "example.test",
    requestId: "ours",
  };
  const forwarded = (out: [string, string][]) =>
    out.filter(([n]) => n === "forwarded" || n === "x-forwarded-for");
  // Trusted: kept, and the hub's element appended.
  assert.deepEqual(
    forwarded(forwardRequestHeaders(headers, {
      ...info,
      trustForwarded: true,
      appendForwarded: true,
    })),
    [
      [
        "forwarded",
        "for=198.51.100.1;proto=https, for=10.0.0.1;proto=http;host=example.test",
      ],
      ["x-forwarded-for", "198.51.100.1, 10.0.0.1"],
    ],
  );
  // Not trusted: the consumer's is dropped; the hub's element alone.
  assert.deepEqual(
    forwarded(forwardRequestHeaders(headers, {
      ...info,
      clientIp: "2001:db8::9",
      trustForwarded: false,
      appendForwarded: true,
    })),
    [
      ["forwarded", 'for="[2001:db8::9]";proto=http;host=example.test'],
      ["x-forwarded-for", "2001:db8::9"],
    ],
  );
  // An empty last field line leaves no empty element.
  const empty = new Headers([["host", "example.test"]]);
  empty.append("forwarded", "for=198.51.100.1");
  empty.append("forwarded", "");
  assert.deepEqual(
    forwarded(forwardRequestHeaders(empty, {
      ...info,
      trustForwarded: true,
      appendForwarded: true,
    })).slice(0, 1),
    [[
      "forwarded",
      "for=198.51.100.1, for=10.0.0.1;proto=http;host=example.test",
    ]],
  );
  // By default, as before: passed on as it came when trusted, else dropped.
  for (const trustForwarded of [true, false]) {
    assert.deepEqual(
      forwardRequestHeaders(headers, { ...info, trustForwarded }).filter((
        [n],
      ) => n === "forwarded"),
      trustForwarded ? [["forwarded", "for=198.51.100.1;proto=https"]] : [],
    );
  }
});
