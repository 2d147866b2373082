"""imds_flow.pcapread: UDP datagrams out of pcap / pcapng captures.

Captures are built in tmp_path, with scapy's writers (wrpcap, PcapNgWriter) where they can write the
case, and by hand (struct) for what they cannot: big-endian files, pcapng if_tsresol / if_tsoffset,
simple packet blocks, multiple sections, truncated and corrupt files.
"""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import (
    ARP,
    CookedLinux,
    CookedLinuxV2,
    Dot1AD,
    Dot1Q,
    Ether,
    Loopback,
    LoopbackOpenBSD,
)
from scapy.utils import EDecimal, PcapNgWriter, wrpcap

from imds_flow.addr import from_hilo, to_hilo
from imds_flow.datagrams import DatagramBatch
from imds_flow.pcapread import SKIP_REASONS, PcapError, UdpReader

T0 = 1_700_000_000  # capture times used below: T0 + k / 4 is exact in every format


# ---------------------------------------------------------------- helpers



def read_udp(source, batch: int = 1024, **kw):
    """The reader's batches, for tests that do not look at its stats."""
    return iter(UdpReader(source, batch=batch, **kw))

def eth(**kw):
    return Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02", **kw)


def stamp(pkt, t):
    pkt.time = EDecimal(t)
    return pkt


def udp4(payload, src="192.0.2.10", sport=49152, dport=2055, dst="198.51.100.1"):
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload


def udp6(payload, src="2001:db8::10", sport=49152, dport=4739, dst="2001:db8::1"):
    return IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload


def collect(source, **kw):
    """Read a capture; return the reader and [(payload, source address, port, ts)]."""
    r = UdpReader(source, **kw)
    out = []
    for b in r:
        assert isinstance(b, DatagramBatch)
        check_batch_shape(b)
        for i in range(b.n):
            out.append((b.payload(i), from_hilo(b.src_hi[i], b.src_lo[i]), int(b.sport[i]), float(b.ts[i])))
    check_stats(r)
    return r, out


def check_batch_shape(b):
    assert b.n == len(b.offs) == len(b.lens) == len(b.src_hi) == len(b.src_lo) == len(b.sport) == len(b.ts)
    assert (b.buf.dtype, b.offs.dtype, b.lens.dtype) == (np.uint8, np.int64, np.int32)
    assert (b.src_hi.dtype, b.src_lo.dtype, b.sport.dtype, b.ts.dtype) == (np.uint64, np.uint64, np.uint16, np.float64)
    assert b.n >= 1
    assert int(b.offs[0]) == 0 and int(b.offs[-1] + b.lens[-1]) == b.buf.size
    assert np.array_equal(b.offs[1:], (b.offs + b.lens)[:-1])


def check_stats(r):
    """Every capture record is either yielded or counted under exactly one skip reason."""
    st = r.stats
    assert st["packets"] == st["datagrams"] + sum(st[k] for k in SKIP_REASONS)


def skips(r):
    return {k: v for k, v in r.stats.items() if k in SKIP_REASONS and v}


def pcap_file(frames, *, linktype=1, e="<", nano=False, snaplen=65535, modified=False):
    """A classic pcap by hand. frames: (data, sec, frac) or (data, sec, frac, origlen)."""
    magic = 0xA1B2CD34 if modified else 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for fr in frames:
        data, sec, frac = bytes(fr[0]), fr[1], fr[2]
        origlen = fr[3] if len(fr) > 3 else len(data)
        out.append(struct.pack(e + "IIII", sec, frac, len(data), origlen))
        if modified:
            out.append(struct.pack(e + "iHBx", 2, 0x0800, 0))
        out.append(data)
    return b"".join(out)


def _pad(b):
    return b + b"\0" * (-len(b) % 4)


def ng_block(e, btype, body):
    body = _pad(body)
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def ng_shb(e):
    return ng_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_opt(e, code, value):
    return struct.pack(e + "HH", code, len(value)) + _pad(value)


def ng_idb(e, linktype, snaplen=0, tsresol=None, tsoffset=None):
    opts = ng_opt(e, 2, b"if0")
    if tsresol is not None:
        opts += ng_opt(e, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += ng_opt(e, 14, struct.pack(e + "q", tsoffset))
    opts += struct.pack(e + "HH", 0, 0)
    return ng_block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts)


def ng_epb(e, iface, ticks, data, origlen=None):
    data = bytes(data)
    origlen = len(data) if origlen is None else origlen
    hdr = struct.pack(e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), origlen)
    return ng_block(e, 6, hdr + _pad(data) + ng_opt(e, 1, b"comment") + struct.pack(e + "HH", 0, 0))


def ng_spb(e, data, origlen=None):
    data = bytes(data)
    return ng_block(e, 3, struct.pack(e + "I", len(data) if origlen is None else origlen) + data)


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ---------------------------------------------------------------- link types and IP versions


def test_ethernet_ipv4(tmp_path):
    pkts = [
        stamp(eth() / udp4(b"v5-export-%d" % i, src=f"10.0.0.{i + 1}", sport=1000 + i), T0 + Decimal(i) / 4)
        for i in range(3)
    ]
    pkts.append(stamp(eth() / udp4(b"six", sport=65535), Decimal("1700000000.123456")))
    path = tmp_path / "eth4.pcap"
    wrpcap(str(path), pkts)
    r, got = collect(path)
    assert got == [
        (b"v5-export-0", "10.0.0.1", 1000, T0 + 0.0),
        (b"v5-export-1", "10.0.0.2", 1001, T0 + 0.25),
        (b"v5-export-2", "10.0.0.3", 1002, T0 + 0.5),
        (b"six", "192.0.2.10", 65535, T0 + 123456 / 1e6),
    ]
    assert r.stats["packets"] == r.stats["datagrams"] == 4
    assert r.skipped_summary() == ""


def test_ethernet_padding_is_not_payload(tmp_path):
    # a 3-byte payload makes a 45-byte frame; Ethernet pads it to 60 bytes on the wire
    frame = bytes(eth() / udp4(b"abc")) + b"\xee" * 15
    path = write(tmp_path, "pad.pcap", pcap_file([(frame, T0, 0)]))
    _, got = collect(path)
    assert [g[0] for g in got] == [b"abc"]


def test_ethernet_dot1q_ipv6(tmp_path):
    pkts = [
        stamp(eth() / Dot1Q(vlan=42) / udp6(b"ipfix-a", src="2001:db8:0:1::a", sport=4739), T0),
        stamp(eth() / Dot1Q(vlan=43) / udp6(b"ipfix-b", src="fe80::1", sport=9996), T0 + 1),
    ]
    path = tmp_path / "vlan6.pcap"
    wrpcap(str(path), pkts)
    _, got = collect(path)
    assert got == [(b"ipfix-a", "2001:db8:0:1::a", 4739, T0 + 0.0), (b"ipfix-b", "fe80::1", 9996, T0 + 1.0)]


def test_double_and_triple_tagged(tmp_path):
    pkts = [
        stamp(eth() / Dot1AD(vlan=100) / Dot1Q(vlan=200) / udp4(b"qinq", src="203.0.113.7", sport=2056), T0),
        stamp(eth(type=0x9100) / Dot1Q(vlan=5, type=0x8100) / Dot1Q(vlan=6) / udp6(b"q3"), T0 + 2),
    ]
    path = tmp_path / "qinq.pcap"
    wrpcap(str(path), pkts)
    _, got = collect(path)
    assert got == [(b"qinq", "203.0.113.7", 2056, T0 + 0.0), (b"q3", "2001:db8::10", 49152, T0 + 2.0)]


def test_linux_cooked_sll(tmp_path):
    pkts = [
        stamp(CookedLinux(proto=0x0800) / udp4(b"sll4", src="172.16.1.1", sport=2055), T0),
        stamp(CookedLinux(proto=0x86DD) / udp6(b"sll6", src="2001:db8::99", sport=2056), T0 + 0.25),
        stamp(CookedLinux(proto=0x8100) / Dot1Q(vlan=7) / udp4(b"sll-tagged"), T0 + 0.5),
    ]
    path = tmp_path / "sll.pcap"
    wrpcap(str(path), pkts)
    assert struct.unpack_from("<I", path.read_bytes(), 20)[0] == 113
    _, got = collect(path)
    assert got == [
        (b"sll4", "172.16.1.1", 2055, T0 + 0.0),
        (b"sll6", "2001:db8::99", 2056, T0 + 0.25),
        (b"sll-tagged", "192.0.2.10", 49152, T0 + 0.5),
    ]


def test_linux_cooked_sll2(tmp_path):
    pkts = [
        stamp(CookedLinuxV2(proto=0x0800) / udp4(b"sll2-4", src="172.16.1.2"), T0),
        stamp(CookedLinuxV2(proto=0x86DD) / udp6(b"sll2-6"), T0 + 0.75),
    ]
    path = tmp_path / "sll2.pcap"
    wrpcap(str(path), pkts)
    assert struct.unpack_from("<I", path.read_bytes(), 20)[0] == 276
    _, got = collect(path)
    assert got == [(b"sll2-4", "172.16.1.2", 49152, T0 + 0.0), (b"sll2-6", "2001:db8::10", 49152, T0 + 0.75)]


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip(tmp_path, linktype):
    pkts = [stamp(udp4(b"raw4", src="100.64.0.1", sport=777), T0), stamp(udp6(b"raw6"), T0 + 0.25)]
    path = tmp_path / "raw.pcap"
    wrpcap(str(path), pkts, linktype=linktype)
    _, got = collect(path)
    assert got == [(b"raw4", "100.64.0.1", 777, T0 + 0.0), (b"raw6", "2001:db8::10", 49152, T0 + 0.25)]


def test_ipv4_and_ipv6_link_types(tmp_path):
    p4, p6 = tmp_path / "ipv4.pcap", tmp_path / "ipv6.pcap"
    wrpcap(str(p4), [stamp(udp4(b"dlt228"), T0)])  # scapy writes LINKTYPE_IPV4 for IP
    wrpcap(str(p6), [stamp(udp6(b"dlt229"), T0)])
    assert struct.unpack_from("<I", p4.read_bytes(), 20)[0] == 228
    assert collect(p4)[1] == [(b"dlt228", "192.0.2.10", 49152, T0 + 0.0)]
    assert collect(p6)[1] == [(b"dlt229", "2001:db8::10", 49152, T0 + 0.0)]


def test_bsd_null_and_openbsd_loop(tmp_path):
    null = tmp_path / "null.pcap"
    wrpcap(str(null), [stamp(Loopback() / udp4(b"null4"), T0), stamp(Loopback(type=24) / udp6(b"null6"), T0)])
    assert collect(null)[1] == [(b"null4", "192.0.2.10", 49152, T0 + 0.0), (b"null6", "2001:db8::10", 49152, T0 + 0.0)]
    # DLT_NULL written by a big-endian host: the family is in the last byte
    be_null = write(tmp_path, "null-be.pcap", pcap_file([(b"\0\0\0\x1e" + bytes(udp6(b"darwin6")), T0, 0)], linktype=0))
    assert collect(be_null)[1] == [(b"darwin6", "2001:db8::10", 49152, T0 + 0.0)]
    loop = tmp_path / "loop.pcap"
    wrpcap(str(loop), [stamp(LoopbackOpenBSD() / udp4(b"loop4"), T0), stamp(LoopbackOpenBSD(type=24) / udp6(b"loop6"), T0)])
    assert struct.unpack_from("<I", loop.read_bytes(), 20)[0] == 108
    assert collect(loop)[1] == [(b"loop4", "192.0.2.10", 49152, T0 + 0.0), (b"loop6", "2001:db8::10", 49152, T0 + 0.0)]


def test_ipv4_options(tmp_path):
    pkt = eth() / IP(src="192.0.2.77", options=b"\x94\x04\x00\x00" * 3) / UDP(sport=1, dport=2) / b"opts"
    assert bytes(pkt)[14] == 0x48  # IHL 8
    path = tmp_path / "opts.pcap"
    wrpcap(str(path), [stamp(pkt, T0)])
    assert collect(path)[1] == [(b"opts", "192.0.2.77", 1, T0 + 0.0)]


def test_ipv6_extension_headers(tmp_path):
    chain = IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
    v6 = IPv6(src="2001:db8::ee", dst="2001:db8::1")
    pkts = [
        stamp(eth() / v6 / chain / UDP(sport=3000, dport=4739) / b"ext-chain", T0),
        stamp(eth() / v6 / IPv6ExtHdrFragment(offset=0, m=0, id=1) / UDP(sport=3001) / b"atomic", T0),
        stamp(eth() / v6 / IPv6ExtHdrFragment(offset=0, m=1, id=2) / UDP(sport=3002) / b"first-frag", T0),
        stamp(eth() / v6 / IPv6ExtHdrFragment(offset=8, m=0, id=2, nh=17) / b"tail-of-frag", T0),
        stamp(eth() / v6 / IPv6ExtHdrHopByHop() / TCP(), T0),
    ]
    path = tmp_path / "ext6.pcap"
    wrpcap(str(path), pkts)
    r, got = collect(path)
    assert got == [(b"ext-chain", "2001:db8::ee", 3000, T0 + 0.0), (b"atomic", "2001:db8::ee", 3001, T0 + 0.0)]
    assert skips(r) == {"fragment": 2, "non_udp": 1}


# ---------------------------------------------------------------- file formats


def test_nanosecond_pcap(tmp_path):
    pkts = [stamp(eth() / udp4(b"ns"), Decimal("1700000000.123456789")), stamp(eth() / udp4(b"ns2"), T0 + 1)]
    path = tmp_path / "ns.pcap"
    wrpcap(str(path), pkts, nano=True)
    assert path.read_bytes()[:4] == b"\x4d\x3c\xb2\xa1"
    _, got = collect(path)
    assert [g[3] for g in got] == [T0 + 123456789 / 1e9, T0 + 1.0]


@pytest.mark.parametrize("nano", [False, True])
def test_big_endian_pcap(tmp_path, nano):
    frac = 999_999_999 if nano else 999_999
    frames = [
        (bytes(eth() / udp4(b"big-endian", src="198.18.0.1", sport=2055)), T0, frac),
        (bytes(eth() / Dot1Q() / udp6(b"be6", src="2001:db8::be")), T0 + 5, 1),
    ]
    path = write(tmp_path, "be.pcap", pcap_file(frames, e=">", nano=nano))
    assert path.read_bytes()[:4] == (b"\xa1\xb2\x3c\x4d" if nano else b"\xa1\xb2\xc3\xd4")
    div = 1e9 if nano else 1e6
    _, got = collect(path)
    assert got == [
        (b"big-endian", "198.18.0.1", 2055, T0 + frac / div),
        (b"be6", "2001:db8::be", 49152, T0 + 5 + 1 / div),
    ]


@pytest.mark.parametrize("e", ["<", ">"])
def test_modified_kuznetzov_pcap(tmp_path, e):
    path = write(tmp_path, "kuz.pcap", pcap_file([(bytes(eth() / udp4(b"kuz")), T0, 5)], e=e, modified=True))
    assert collect(path)[1] == [(b"kuz", "192.0.2.10", 49152, T0 + 5 / 1e6)]


def test_pcapng_two_interfaces_scapy(tmp_path):
    eths = [stamp(eth() / udp4(b"eth-%d" % i, src="10.1.1.1", sport=2055), T0 + Decimal(i) / 2) for i in range(2)]
    sll = [stamp(CookedLinux(proto=0x86DD) / udp6(b"sll-%d" % i, src="2001:db8::5", sport=4739), T0 + 10) for i in range(2)]
    for p in sll:
        p.sniffed_on = "any"  # a second interface, with its own IDB and link type
    path = tmp_path / "two.pcapng"
    w = PcapNgWriter(str(path))
    for p in (eths[0], sll[0], eths[1], sll[1]):
        w.write(p)
    w.close()
    r, got = collect(path)
    assert got == [
        (b"eth-0", "10.1.1.1", 2055, T0 + 0.0),
        (b"sll-0", "2001:db8::5", 4739, T0 + 10.0),
        (b"eth-1", "10.1.1.1", 2055, T0 + 0.5),
        (b"sll-1", "2001:db8::5", 4739, T0 + 10.0),
    ]
    assert r.stats["packets"] == 4


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_by_hand(tmp_path, e):
    """Resolutions 10^-9 and 2^-20, if_tsoffset, SPB, unknown blocks, a second section in the other byte order."""
    other = ">" if e == "<" else "<"
    data = b"".join(
        [
            ng_shb(e),
            ng_idb(e, 1, tsresol=9),
            ng_block(e, 4, b"\0\0\0\0"),  # name resolution block: ignored
            ng_idb(e, 101, tsresol=0x94, tsoffset=-3600),
            ng_epb(e, 0, T0 * 10**9 + 123_456_789, bytes(eth() / udp4(b"ns-resol", sport=1))),
            ng_epb(e, 1, (T0 << 20) + (1 << 19), bytes(udp4(b"pow2-resol", src="10.9.9.9", sport=2))),
            ng_spb(e, bytes(eth() / udp4(b"simple", sport=3)) + b"\0\0"),  # a SPB has no time: the last one is kept
            ng_block(e, 5, b"\0" * 8),  # interface statistics: ignored
            ng_block(e, 0x40000BAD, b"custom"),  # custom block: ignored
            ng_shb(other),  # new section: interfaces start over
            ng_idb(other, 113, tsresol=3),
            ng_epb(other, 0, T0 * 1000 + 7, bytes(CookedLinux(proto=0x0800) / udp4(b"section-2", sport=4))),
        ]
    )
    r, got = collect(write(tmp_path, "hand.pcapng", data))
    t_pow2 = T0 + 0.5 - 3600
    assert got == [
        (b"ns-resol", "192.0.2.10", 1, T0 + 123_456_789 / 1e9),
        (b"pow2-resol", "10.9.9.9", 2, t_pow2),
        (b"simple", "192.0.2.10", 3, t_pow2),
        (b"section-2", "192.0.2.10", 4, T0 + 7 / 1e3),
    ]
    assert r.stats["packets"] == 4


def test_pcapng_spb_snaplen_and_bad_interface(tmp_path):
    e = "<"
    frame = bytes(eth() / udp4(b"x" * 100))
    data = b"".join(
        [
            ng_shb(e),
            ng_idb(e, 1, snaplen=64),
            ng_spb(e, frame[:64], origlen=len(frame)),  # cut by the interface's snaplen
            ng_epb(e, 7, 0, frame),  # no interface 7
            ng_block(e, 2, struct.pack(e + "HHIIII", 0, 0, 0, 0, len(frame), len(frame)) + frame),  # obsolete PB
        ]
    )
    r, got = collect(write(tmp_path, "spb.pcapng", data))
    assert got == []
    assert skips(r) == {"snaplen": 1, "malformed": 1, "pcapng_block": 1}


def test_file_object_and_bytesio(tmp_path):
    path = tmp_path / "f.pcap"
    wrpcap(str(path), [stamp(eth() / udp4(b"fobj"), T0)])
    with open(path, "rb") as f:
        assert collect(f)[1] == [(b"fobj", "192.0.2.10", 49152, T0 + 0.0)]
        assert not f.closed
    assert collect(io.BytesIO(path.read_bytes()))[1] == [(b"fobj", "192.0.2.10", 49152, T0 + 0.0)]


# ---------------------------------------------------------------- skipping and counting


def test_skips_are_counted(tmp_path):
    big = udp4(b"F" * 3000, src="192.0.2.99")
    frags = fragment(big, fragsize=1400)
    assert len(frags) == 3
    full = bytes(eth() / udp4(b"y" * 200))
    bad_len = bytearray(bytes(eth() / udp4(b"z" * 20)))
    bad_len[14 + 20 + 4 : 14 + 20 + 6] = struct.pack(">H", 500)  # UDP length past the IP packet
    short_udp = bytearray(bytes(eth() / udp4(b"z" * 20)))
    short_udp[14 + 20 + 4 : 14 + 20 + 6] = struct.pack(">H", 4)  # UDP length below its header
    frames = [
        (bytes(eth() / udp4(b"keep-1")), T0, 0),
        (bytes(eth() / IP() / TCP(sport=1, dport=2) / b"tcp"), T0, 0),
        (bytes(eth() / IP() / ICMP()), T0, 0),
        (bytes(eth() / IPv6() / TCP()), T0, 0),
        (bytes(eth() / ARP()), T0, 0),
        *[(bytes(eth() / f), T0, 0) for f in frags],
        (full[:100], T0, 0, len(full)),  # snaplen 100
        (full[:30], T0, 0, len(full)),  # snaplen cuts the IP header
        (bytes(bad_len), T0, 0),
        (bytes(short_udp), T0, 0),
        (full[:100], T0, 0),  # frame shorter than its UDP length, yet not cut by a snaplen
        (bytes(eth() / IP(version=5) / UDP()), T0, 0),
        (bytes(eth() / udp4(b"keep-2")), T0, 1),
    ]
    path = write(tmp_path, "skips.pcap", pcap_file(frames, snaplen=65535))
    r, got = collect(path)
    assert [g[0] for g in got] == [b"keep-1", b"keep-2"]
    assert skips(r) == {"non_udp": 3, "non_ip": 1, "fragment": 3, "snaplen": 2, "bad_udp_length": 3, "malformed": 1}
    assert r.stats["packets"] == len(frames)
    summary = r.skipped_summary()
    assert summary.startswith("skipped ")
    assert "1 non-IP" in summary and "3 non-UDP" in summary and "3 fragmented" in summary


def test_unsupported_link_type(tmp_path):
    path = write(tmp_path, "lt.pcap", pcap_file([(b"\0" * 60, T0, 0)] * 2, linktype=147))
    r, got = collect(path)
    assert got == [] and skips(r) == {"linktype": 2}


def test_dst_port_filter(tmp_path):
    pkts = [stamp(eth() / udp4(b"p%d" % i, dport=(2055 if i % 2 else 9995)), T0 + i) for i in range(6)]
    path = tmp_path / "ports.pcap"
    wrpcap(str(path), pkts)
    r, got = collect(path, dst_port=2055)
    assert [g[0] for g in got] == [b"p1", b"p3", b"p5"]
    assert skips(r) == {"dst_port": 3}
    assert [g[0] for g in collect(path, dst_port=1)[1]] == []


# ---------------------------------------------------------------- batching, progress, chunking


def test_batching(tmp_path):
    pkts = [stamp(eth() / udp4(b"datagram-%02d" % i * (i + 1), sport=1000 + i), T0 + i) for i in range(10)]
    path = tmp_path / "ten.pcap"
    wrpcap(str(path), pkts)
    batches = list(read_udp(path, batch=3))
    assert [b.n for b in batches] == [3, 3, 3, 1]
    payloads = [b.payload(i) for b in batches for i in range(b.n)]
    assert payloads == [b"datagram-%02d" % i * (i + 1) for i in range(10)]
    assert [int(p) for b in batches for p in b.sport] == [1000 + i for i in range(10)]
    assert list(np.concatenate([b.ts for b in batches])) == [T0 + float(i) for i in range(10)]
    assert sum(b.n for b in read_udp(path)) == 10


def test_batches_span_chunk_refills(tmp_path):
    """Small chunks: records and batches straddle refills; nothing is lost or reordered."""
    rng = np.random.default_rng(7)
    frames, want = [], []
    for i in range(3000):
        payload = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        src = f"10.{i % 7}.{i % 251}.{i % 13}"
        pkt = eth() / (udp4(payload, src=src, sport=i) if i % 3 else udp6(payload, src=f"2001:db8::{i + 1:x}", sport=i))
        frames.append((bytes(pkt), T0 + i, i))
        want.append((payload, src if i % 3 else f"2001:db8::{i + 1:x}", i, T0 + i + i / 1e6))
    data = pcap_file(frames)
    assert len(data) > 4 * 65536
    for batch in (1, 7, 1024, 5000):
        r, got = collect(write(tmp_path, "many.pcap", data), batch=batch, chunk_size=65536)
        assert got == want
    # the same as a pcapng with SPBs mixed in (their time is the previous block's)
    e = "<"
    blocks = [ng_shb(e), ng_idb(e, 1)]
    want_ng = []
    for i, (frame, sec, frac) in enumerate(frames):
        if i % 5 == 4:
            blocks.append(ng_spb(e, frame))
            want_ng.append(want[i][:3] + (want_ng[-1][3],))
        else:
            blocks.append(ng_epb(e, 0, sec * 10**6 + frac, frame))
            want_ng.append(want[i])
    _, got = collect(write(tmp_path, "many.pcapng", b"".join(blocks)), batch=100, chunk_size=65536)
    assert got == want_ng


def test_progress(tmp_path):
    path = tmp_path / "prog.pcap"
    wrpcap(str(path), [stamp(eth() / udp4(b"p" * 500), T0) for _ in range(300)])
    size = path.stat().st_size
    calls = []
    fake_now = iter(range(0, 10**6))  # every clock() call is a second later
    r = UdpReader(path, batch=10, progress=lambda done, total: calls.append((done, total)), clock=lambda: next(fake_now), chunk_size=65536)
    assert sum(b.n for b in r) == 300
    assert calls[-1] == (size, size)
    assert len(calls) > 3
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    # with a clock that never advances, only the final call is made
    calls.clear()
    r = UdpReader(path, batch=10, progress=lambda done, total: calls.append((done, total)), clock=lambda: 0.0)
    list(r)
    assert calls == [(size, size)]
    # a stream of unknown size
    calls.clear()

    class Pipe(io.RawIOBase):
        def __init__(self, data):
            self._b = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buf):
            return self._b.readinto(buf)

    list(UdpReader(Pipe(path.read_bytes()), progress=lambda d, t: calls.append((d, t))))
    assert calls[-1] == (size, None)


# ---------------------------------------------------------------- truncated and bad files


def test_truncated_files(tmp_path):
    pkts = [stamp(eth() / udp4(b"t%d" % i), T0 + i) for i in range(3)]
    path = tmp_path / "full.pcap"
    wrpcap(str(path), pkts)
    data = path.read_bytes()
    rec = len(data[24:]) // 3
    for cut, n_ok in [(24 + 2 * rec + 10, 2), (24 + 2 * rec + 20, 2), (24 + rec + 1, 1), (24 + 3, 0)]:
        r, got = collect(write(tmp_path, "cut.pcap", data[:cut]))
        assert [g[0] for g in got] == [b"t%d" % i for i in range(n_ok)]
        assert r.stats["truncated_file"] == 1
        assert "file truncated" in r.skipped_summary()
    r, got = collect(write(tmp_path, "hdr.pcap", data[:20]))  # pcap header itself cut
    assert got == [] and r.stats["truncated_file"] == 1
    r, got = collect(path)
    assert len(got) == 3 and r.stats["truncated_file"] == 0
    # pcapng cut inside a block
    ng = b"".join([ng_shb("<"), ng_idb("<", 1), ng_epb("<", 0, 0, bytes(eth() / udp4(b"ng")))] * 1)
    ng += ng_epb("<", 0, 0, bytes(eth() / udp4(b"lost")))[:-9]
    r, got = collect(write(tmp_path, "cut.pcapng", ng))
    assert [g[0] for g in got] == [b"ng"] and r.stats["truncated_file"] == 1


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"GARBAGE! " * 100, b"\x0a\x0d\x0d\x0a" + b"\0" * 40, bytes(range(256))],
    ids=["empty", "short", "text", "pcapng-type-bad-bom", "bytes"],
)
def test_not_a_capture(tmp_path, data):
    path = write(tmp_path, "junk.bin", data)
    with pytest.raises(PcapError, match=r"not a pcap or pcapng file: .*junk\.bin"):
        list(read_udp(path))


def test_gzip_and_missing_file(tmp_path):
    path = write(tmp_path, "x.pcap.gz", gzip.compress(pcap_file([])))
    with pytest.raises(PcapError, match="gzip"):
        list(read_udp(path))
    with pytest.raises(PcapError, match="cannot open"):
        list(read_udp(tmp_path / "nope.pcap"))


def test_corrupt_lengths(tmp_path):
    bad_block = ng_shb("<") + struct.pack("<II", 6, 13) + b"\0" * 40
    with pytest.raises(PcapError, match="corrupt capture .* at byte 28: bad block length 13"):
        list(read_udp(write(tmp_path, "b.pcapng", bad_block)))
    huge = pcap_file([]) + struct.pack("<IIII", 0, 0, 0x7FFFFFFF, 0x7FFFFFFF) + b"\0" * 100
    with pytest.raises(PcapError, match="corrupt capture"):
        list(read_udp(write(tmp_path, "h.pcap", huge)))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        UdpReader(tmp_path / "x", batch=0)
    with pytest.raises(ValueError):
        UdpReader(tmp_path / "x", dst_port=70000)


def test_no_scapy_at_run_time():
    code = "import sys, imds_flow.pcapread; assert not [m for m in sys.modules if m.startswith('scapy')]"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- properties


def _link_frame(link, ip, tpids):
    """ip (bytes) behind a link header, with 802.1Q/802.1ad tags where the link type allows them."""
    et = 0x0800 if ip[0] >> 4 == 4 else 0x86DD
    types = list(tpids) + [et]
    tags = b"".join(struct.pack(">HH", 100 + i, t) for i, t in enumerate(types[1:]))
    first = struct.pack(">H", types[0])
    if link == "eth":
        return b"\x02" * 6 + b"\x04" * 6 + first + tags + ip
    if link == "sll":
        return struct.pack(">HHH", 0, 1, 6) + b"\x04" * 8 + first + tags + ip
    if link == "sll2":
        return first + b"\0\0" + struct.pack(">IHBB", 2, 1, 0, 6) + b"\x04" * 8 + tags + ip
    if link == "null":
        return struct.pack("<I", 2 if et == 0x0800 else 28) + ip
    return ip  # raw


_LINKTYPE = {"eth": 1, "sll": 113, "sll2": 276, "null": 0, "raw": 101}

datagram = hs.tuples(
    hs.binary(max_size=200),
    hs.one_of(hs.ip_addresses(v=4), hs.ip_addresses(v=6)).map(str),
    hs.integers(0, 0xFFFF),
    hs.lists(hs.sampled_from([0x8100, 0x88A8, 0x9100]), max_size=3),
    hs.integers(0, 2**32 - 1),
    hs.integers(0, 999_999),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(link=hs.sampled_from(sorted(_LINKTYPE)), dgrams=hs.lists(datagram, max_size=8), batch=hs.integers(1, 4))
def test_matches_scapy_built_packets(tmp_path, link, dgrams, batch):
    """Oracle: whatever scapy builds, the reader returns the payload, source, port and time put in."""
    frames, want = [], []
    for payload, src, sport, tpids, sec, usec in dgrams:
        ip = IP(src=src) if ":" not in src else IPv6(src=src)
        frames.append((_link_frame(link, bytes(ip / UDP(sport=sport) / payload), tpids), sec, usec))
        want.append((payload, from_hilo(*to_hilo(src)), sport, sec + usec / 1e6))
    _, got = collect(write(tmp_path, "prop.pcap", pcap_file(frames, linktype=_LINKTYPE[link])), batch=batch)
    assert got == want


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    frames=hs.lists(hs.binary(max_size=120), max_size=6),
    linktype=hs.sampled_from([0, 1, 12, 101, 108, 113, 228, 229, 276]),
    ng=hs.booleans(),
    cut=hs.integers(0, 2000),
    dst_port=hs.sampled_from([None, 0, 2055]),
)
def test_any_record_contents_are_counted_never_raised(tmp_path, frames, linktype, ng, cut, dst_port):
    """Decoders are total: random frame bytes (and a cut anywhere) give datagrams or counted skips."""
    if ng:
        data = ng_shb("<") + ng_idb("<", linktype) + b"".join(ng_epb("<", 0, 0, f) for f in frames)
    else:
        data = pcap_file([(f, 0, 0, len(f) + (i % 2)) for i, f in enumerate(frames)], linktype=linktype)
    data = data[: max(cut, 4)] if cut < len(data) else data
    r, got = collect(write(tmp_path, "fuzz.cap", data), dst_port=dst_port)
    assert len(got) == r.stats["datagrams"]


_SEEDS = [  # (link type, a UDP frame) to mutate
    (1, bytes(eth() / udp4(b"a" * 20))),
    (1, bytes(eth() / Dot1Q() / Dot1Q() / udp6(b"b" * 30))),
    (1, bytes(eth() / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment() / UDP() / (b"c" * 5))),
    (113, bytes(CookedLinux() / udp4(b"d" * 9))),
    (276, bytes(CookedLinuxV2() / udp6(b"d" * 9))),
    (101, bytes(udp6(b"e" * 3))),
    (0, bytes(Loopback() / udp4(b"f" * 3))),
]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=hs.sampled_from(_SEEDS),
    flips=hs.lists(hs.tuples(hs.integers(0, 120), hs.integers(0, 255)), min_size=1, max_size=4),
    keep=hs.integers(0, 120),
    cut_by_snaplen=hs.booleans(),
    ng=hs.booleans(),
)
def test_mutated_udp_frames_are_counted_never_raised(tmp_path, seed, flips, keep, cut_by_snaplen, ng):
    """Decoders are total: a UDP frame with bytes changed and its end cut gives a datagram or a count."""
    linktype, frame = seed
    frame = bytearray(frame)
    for i, v in flips:
        frame[i % len(frame)] = v
    frame = bytes(frame[:keep]) if keep < len(frame) else bytes(frame)
    origlen = len(seed[1]) if cut_by_snaplen else len(frame)
    if ng:
        data = ng_shb("<") + ng_idb("<", linktype) + ng_epb("<", 0, 0, frame, origlen=origlen)
    else:
        data = pcap_file([(frame, 0, 0, origlen)], linktype=linktype)
    r, got = collect(write(tmp_path, "mut.cap", data))
    assert r.stats["packets"] == 1 and len(got) == r.stats["datagrams"] <= 1


# ---------------------------------------------------------------- imds_flow.datagrams


def test_addresses_round_trip():
    assert to_hilo("192.0.2.1") == (0, 0xFFFF_C000_0201)
    assert to_hilo("::ffff:192.0.2.1") == (0, 0xFFFF_C000_0201)
    assert to_hilo("2001:db8::1") == (0x20010DB8 << 32, 1)
    for a in ["0.0.0.0", "255.255.255.255", "169.254.169.254", "::", "::1", "fd00:ec2::254", "2001:db8:1:2:3:4:5:6"]:
        assert from_hilo(*to_hilo(a)) == a
    assert from_hilo(np.uint64(0), np.uint64(0xFFFF_0A00_0001)) == "10.0.0.1"


def test_from_payloads():
    b = DatagramBatch.from_payloads([b"ab", b"", b"cde"])
    check_batch_shape(b)
    assert [b.payload(i) for i in range(3)] == [b"ab", b"", b"cde"]
    assert {from_hilo(h, lo) for h, lo in zip(b.src_hi, b.src_lo)} == {"127.0.0.1"}
    assert list(b.sport) == [9995] * 3 and list(b.ts) == [0.0] * 3
    b = DatagramBatch.from_payloads([b"x", b"y"], src=[("10.0.0.1", 1), ("2001:db8::2", 2)], ts=[1.5, 2.5])
    assert [from_hilo(h, lo) for h, lo in zip(b.src_hi, b.src_lo)] == ["10.0.0.1", "2001:db8::2"]
    assert list(b.sport) == [1, 2] and list(b.ts) == [1.5, 2.5]
    with pytest.raises(ValueError):
        DatagramBatch.from_payloads([b"x"], src=[("10.0.0.1", 1), ("10.0.0.2", 2)])
