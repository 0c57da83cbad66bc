// The fair-queuing key of an address, and address ranges and the consumer
// behind trusted proxies, on strings.

import assert from "node:assert/strict";
import {
  addressKey,
  addressOnly,
  forwardedClient,
  inRanges,
  parseAddressRange,
} from "../_address.ts";

Deno.test("addressKey: IPv4 whole, IPv6 by its /64, IPv4-mapped as IPv4", () => {
  const cases: [string, string][] = [
    ["10.0.0.1", "10.0.0.1"],
    ["2001:db8::3", "2001:db8:0:0::/64"],
    ["2001:DB8:0:0:ffff::9", "2001:db8:0:0::/64"],
    ["2001:0db8:0000:0001:0000:0000:0000:0003", "2001:db8:0:1::/64"],
    ["2001:db8:aa:bb:cc:dd:ee:ff", "2001:db8:aa:bb::/64"],
    ["fe80::1%eth0", "fe80:0:0:0::/64"],
    ["::1", "0:0:0:0::/64"],
    ["::", "0:0:0:0::/64"],
    ["::ffff:192.0.2.1", "192.0.2.1"],
    ["::FFFF:c000:201", "192.0.2.1"],
    // Translated and NAT64 addresses stand for IPv4 consumers.
    ["::ffff:0:192.0.2.1", "192.0.2.1"],
    ["64:ff9b::198.51.100.7", "198.51.100.7"],
    ["64:FF9B::c633:6407", "198.51.100.7"],
    // Not those prefixes: an IPv6 /64 like any other.
    ["64:ff9b:1::192.0.2.1", "64:ff9b:1:0::/64"],
    ["::1.2.3.4", "0:0:0:0::/64"],
    ["::ffff:1:192.0.2.1", "0:0:0:0::/64"],
    ["2001:db8:1:2:3:4:5::", "2001:db8:1:2::/64"],
  ];
  for (const [address, key] of cases) {
    assert.equal(addressKey(address), key, address);
  }
});

Deno.test("addressKey: what is not an address is its own key", () => {
  for (
    const text of [
      "",
      "unknown",
      "1:2:3",
      "1::2::3",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7::8",
      "12345::1",
      "::ffff:300.0.0.1",
      "::1.2.3.4:5",
      "g::1",
    ]
  ) {
    assert.equal(addressKey(text), text, text);
  }
});

Deno.test("addressOnly: a port some proxies add is dropped", () => {
  const cases: [string, string][] = [
    ["10.0.0.1", "10.0.0.1"],
    ["10.0.0.1:51234", "10.0.0.1"],
    ["[2001:db8::1]:443", "2001:db8::1"],
    ["[2001:db8::1]", "2001:db8::1"],
    ["2001:db8::1", "2001:db8::1"],
    ["[]", "[]"],
  ];
  for (const [entry, address] of cases) {
    assert.equal(addressOnly(entry), address, entry);
  }
});

Deno.test("parseAddressRange and inRanges: CIDR blocks and single addresses, IPv4 inside IPv6", () => {
  const ranges = ["10.0.0.0/8", "192.168.1.7", "fd00::/8", "2001:db8::1"]
    .map(parseAddressRange);
  const cases: [string, boolean][] = [
    ["10.0.0.1", true],
    ["10.255.255.255", true],
    ["11.0.0.0", false],
    ["9.255.255.255", false],
    ["192.168.1.7", true],
    ["192.168.1.8", false],
    ["fd12:3456::1", true],
    ["FD00::", true],
    ["fe00::1", false],
    ["2001:db8::1", true],
    ["2001:db8::2", false],
    // A dual-stack listener reports an IPv4 peer as IPv4-mapped.
    ["::ffff:10.9.8.7", true],
    ["::ffff:192.168.1.7", true],
    ["::ffff:11.0.0.1", false],
    ["fd00::1%eth0", true],
    // Not an address: in no range.
    ["", false],
    ["unknown", false],
    ["10.0.0.256", false],
    ["10.0.0", false],
  ];
  for (const [address, expected] of cases) {
    assert.equal(inRanges(address, ranges), expected, address);
  }
  // Bits past the prefix do not matter; /0 takes everything of its family
  // (an IPv4 /0 is every IPv4 address, not IPv6 ones).
  assert.ok(inRanges("10.200.0.1", [parseAddressRange("10.1.2.3/8")]));
  assert.ok(inRanges("203.0.113.9", [parseAddressRange("0.0.0.0/0")]));
  assert.ok(!inRanges("2001:db8::9", [parseAddressRange("0.0.0.0/0")]));
  assert.ok(inRanges("2001:db8::9", [parseAddressRange("::/0")]));
  // Prefixes that are not a whole number of groups.
  const odd = [
    parseAddressRange("172.16.0.0/12"),
    parseAddressRange("fc00::/7"),
  ];
  assert.ok(inRanges("172.31.255.255", odd));
  assert.ok(!inRanges("172.32.0.0", odd));
  assert.ok(inRanges("fdff::1", odd));
  assert.ok(!inRanges("fe00::1", odd));
  assert.ok(inRanges("::1", [parseAddressRange(" ::1/128 ")]));
  assert.ok(!inRanges("::1", []));
});

Deno.test("parseAddressRange refuses what is not a range, naming it", () => {
  for (
    const bad of [
      "",
      "10.0.0.0/33",
      "fd00::/129",
      "10.0.0.0/",
      "10.0.0.0/8/8",
      "10.0.0.0/-1",
      "10.0.0.0/0x8",
      "localhost",
      "10.0.0.256/32",
      "fe80::1%eth0/64",
      "2001:db8::1::2",
    ]
  ) {
    assert.throws(
      () => parseAddressRange(bad),
      (error: Error) =>
        error instanceof TypeError &&
        error.message.includes(JSON.stringify(bad)),
      bad,
    );
  }
});

Deno.test("forwardedClient: from a trusted peer, the last X-Forwarded-For address that is not a trusted proxy's", () => {
  const trusted = ["10.0.0.0/8", "fd00::/8"].map(parseAddressRange);
  const cases: [string | null, string | null, string | null][] = [
    // An untrusted peer is the consumer, whatever it says.
    ["203.0.113.9", "198.51.100.1", "203.0.113.9"],
    // A trusted proxy's word: the address it saw.
    ["10.0.0.1", "198.51.100.1", "198.51.100.1"],
    // A chain: CDN (10.1.1.1) saw 198.51.100.1 and told the balancer
    // (10.0.0.1); what comes before is the consumer's own word.
    ["10.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.1.1", "198.51.100.1"],
    ["10.0.0.1", "6.6.6.6,198.51.100.1 ,10.1.1.1,", "198.51.100.1"],
    // Ports and brackets some proxies add.
    ["10.0.0.1", "[2001:db8::5]:443, 10.1.1.1:8080", "2001:db8::5"],
    ["fd00::1", "198.51.100.1:5000", "198.51.100.1"],
    // Every address a trusted proxy's: the first.
    ["10.0.0.1", "10.2.2.2, 10.1.1.1", "10.2.2.2"],
    // No field, or an empty one: the peer.
    ["10.0.0.1", null, "10.0.0.1"],
    ["10.0.0.1", " , ", "10.0.0.1"],
    // Something that is not an address stops the walk, as in nginx: the
    // consumer is the last address read, or the peer, never the text (it
    // would be a handler's info.remoteAddr) nor what comes before it.
    ["10.0.0.1", "198.51.100.1, unknown", "10.0.0.1"],
    ["10.0.0.1", "198.51.100.1, 10.1.1.1, unknown", "10.0.0.1"],
    ["10.0.0.1", '198.51.100.1, x"y z, 10.1.1.1', "10.1.1.1"],
    ["10.0.0.1", "198.51.100.1, _hidden, 10.1.1.1:80", "10.1.1.1"],
    ["10.0.0.1", "198.51.100.1, [unknown]:80", "10.0.0.1"],
    // A zone means nothing off its host; text after "%" is no address.
    ["10.0.0.1", "fe80::1%eth0 evil", "10.0.0.1"],
    ["10.0.0.1", "198.51.100.1, 10.0.0.256", "10.0.0.1"],
    [null, "198.51.100.1", null],
  ];
  for (const [peer, field, expected] of cases) {
    assert.equal(
      forwardedClient(peer, field, trusted),
      expected,
      `${peer} ${field}`,
    );
  }
});
