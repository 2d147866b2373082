"""pcapframe: locate_udp and the two framings, on bytes (no file, no reader)."""
from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from imds_flow.pcapframe import PcapError, PcapFraming, PcapngFraming, Record, locate_udp

PAYLOAD = b"x" * 24


def frame(pkt) -> bytes:
    return bytes(pkt)


@pytest.mark.parametrize("pkt, linktype, ip_at", [
    (Ether() / IP(src="192.0.2.1") / UDP(sport=9, dport=2055) / PAYLOAD, 1, 14),
    (Ether() / Dot1AD(vlan=5) / Dot1Q(vlan=7) / IP() / UDP(dport=2055) / PAYLOAD, 1, 22),
    (Ether() / IPv6() / IPv6ExtHdrHopByHop() / UDP(dport=2055) / PAYLOAD, 1, 14),
    (IP(options=b"\x01\x01\x01\x00") / UDP(dport=2055) / PAYLOAD, 101, 0),
    (IPv6() / UDP(dport=2055) / PAYLOAD, 229, 0),
])
def test_locate_udp_finds_the_headers(pkt, linktype, ip_at):
    b = frame(pkt)
    reason, q, u, room = locate_udp(b, 0, len(b), linktype, cut=False)
    assert reason is None and q == ip_at
    assert struct.unpack_from(">H", b, u + 2)[0] == 2055
    assert room == 8 + len(PAYLOAD)


@pytest.mark.parametrize("pkt, linktype, cut_to, cut, reason", [
    (Ether() / IP() / TCP(), 1, None, False, "non_udp"),
    (Ether() / IP(flags="MF") / UDP() / PAYLOAD, 1, None, False, "fragment"),
    (Ether() / IPv6() / IPv6ExtHdrFragment(offset=3) / UDP() / PAYLOAD, 1, None, False, "fragment"),
    (Ether(type=0x0806) / (b"\0" * 28), 1, None, False, "non_ip"),
    (Ether() / IP() / UDP() / PAYLOAD, 1, 30, True, "snaplen"),
    (Ether() / IP() / UDP() / PAYLOAD, 1, 30, False, "malformed"),
    (Ether() / IP() / UDP() / PAYLOAD, 147, None, False, "linktype"),
])
def test_locate_udp_says_why_not(pkt, linktype, cut_to, cut, reason):
    b = frame(pkt)[:cut_to]
    assert locate_udp(b, 0, len(b), linktype, cut)[0] == reason


def test_pcap_framing_needs_then_reads():
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    body = bytes(Ether() / IP() / UDP() / PAYLOAD)
    rec = struct.pack("<IIII", 1, 2, len(body), len(body)) + body
    f = PcapFraming(head)
    assert f.next(rec, 0, 10) == -16
    assert f.next(rec, 0, 20) == -(16 + len(body))
    r = Record(*f.next(rec, 0, len(rec)))
    assert (r.p, r.end, r.linktype, r.tso, r.nxt) == (16, len(rec), 1, 0, len(rec))
    bad = struct.pack("<IIII", 1, 2, 1 << 30, 1 << 30)
    with pytest.raises(PcapError):
        f.next(bad, 0, len(bad))


def test_pcapng_framing_blocks():
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHI", 1, 20, 1, 0, 0) + struct.pack("<I", 20)
    body = bytes(Ether() / IP() / UDP() / PAYLOAD)
    pad = (-len(body)) % 4
    epb_len = 32 + len(body) + pad
    epb = struct.pack("<IIIIIII", 6, epb_len, 0, 0, 1, len(body), len(body)) + body + bytes(pad) + struct.pack("<I", epb_len)
    data = shb + idb + epb
    f = PcapngFraming()
    assert f.next(data, 0, len(data)) == 28 and f.sections == 1
    assert f.next(data, 28, len(data)) == 48 and f.if_lt == [1]
    r = Record(*f.next(data, 48, len(data)))
    assert r.p == 48 + 28 and r.end == r.p + len(body) and r.nxt == len(data)
    orphan = struct.pack("<IIIIIII", 6, epb_len, 3, 0, 1, len(body), len(body)) + body + bytes(pad) + \
        struct.pack("<I", epb_len)
    assert f.next(orphan, 0, len(orphan)) == ("malformed", epb_len)     # interface 3 was never described
