// The fair-queuing key of an address, on strings.

import assert from "node:assert/strict";
import { addressKey, addressOnly } from "../_address.ts";

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
