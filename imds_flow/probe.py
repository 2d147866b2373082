"""`imds-flow probe`: one test export carrying one record from a documentation address to a metadata
endpoint, so an operator can prove router port -> collector -> sinks -> SIEM end to end.

Rules: the record goes from PROBE_SOURCE (TEST-NET-1, RFC 5737; 2001:db8::/32, RFC 3849, for an IPv6
endpoint) port PROBE_PORT to the endpoint's port 80 over TCP; a collector marks the alert such a record
raises with test = true (is_probe), and every format says so (ECS tags ["test"], CEF/LEEF test markers,
syslog severity informational). NetFlow v5, v9 and IPFIX are built with scapy; sFlow v5 with build.py
(one flow sample with the sampled Ethernet/IP/TCP header, written by scapy, of an HTTP request for
/latest/meta-data/).
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import time

__all__ = ["PROBE_SOURCE", "PROBE_SOURCE_V6", "PROBE_PORT", "EXPORTS", "build", "send", "is_probe"]

PROBE_SOURCE = "192.0.2.169"
PROBE_SOURCE_V6 = "2001:db8::169"
PROBE_PORT = 16925
EXPORTS = ("v5", "v9", "ipfix", "sflow")
_TEMPLATE_ID = 256
_PROBES = {PROBE_SOURCE, PROBE_SOURCE_V6}


def is_probe(alert: dict) -> bool:
    """An alert raised by a probe record (either direction, should a router report it both ways)."""
    return (alert.get("src") in _PROBES and alert.get("sport") == PROBE_PORT) or \
        (alert.get("dst") in _PROBES and alert.get("dport") == PROBE_PORT)


def _fields(v6: bool, ipfix: bool) -> list[tuple[int, int]]:
    counter = 8 if ipfix else 4
    addr = [(27, 16), (28, 16)] if v6 else [(8, 4), (12, 4)]
    return addr + [(7, 2), (11, 2), (4, 1), (1, counter), (2, counter)]


def _record(src: str, dst: str, v6: bool, ipfix: bool) -> bytes:
    counter = "Q" if ipfix else "I"
    return (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
            + struct.pack(f">HHB{counter}{counter}", PROBE_PORT, 80, 6, 120, 2))


def build(export: str, endpoint: str = "169.254.169.254", now: float | None = None, agent: str = "0.0.0.0") -> bytes:
    """The datagram of one test export (templates included)."""
    from scapy.layers.netflow import (NetflowDataflowsetV9, NetflowFlowsetV9, NetflowHeader, NetflowHeaderV5,
                                      NetflowHeaderV9, NetflowHeaderV10, NetflowRecordV5, NetflowTemplateFieldV9,
                                      NetflowTemplateV9)
    from scapy.packet import Raw

    now = time.time() if now is None else now
    v6 = ipaddress.ip_address(endpoint).version == 6
    src = PROBE_SOURCE_V6 if v6 else PROBE_SOURCE
    if export == "v5":
        if v6:
            raise ValueError("NetFlow v5 carries IPv4 only: use --export v9, ipfix or sflow for an IPv6 endpoint")
        pkt = NetflowHeader(version=5) / NetflowHeaderV5(count=1, unixSecs=int(now), sysUptime=1000) / \
            NetflowRecordV5(src=src, dst=endpoint, srcport=PROBE_PORT, dstport=80, prot=6, dpkts=2, dOctets=120,
                            first=900, last=1000)
        return bytes(pkt)
    if export in ("v9", "ipfix"):
        ipfix = export == "ipfix"
        template = NetflowFlowsetV9(flowSetID=2 if ipfix else 0, templates=[NetflowTemplateV9(
            templateID=_TEMPLATE_ID, template_fields=[NetflowTemplateFieldV9(fieldType=t, fieldLength=n)
                                                      for t, n in _fields(v6, ipfix)])])
        data = NetflowDataflowsetV9(templateID=_TEMPLATE_ID, records=[Raw(_record(src, endpoint, v6, ipfix))])
        header = NetflowHeaderV10(ExportTime=int(now), flowSequence=0, ObservationDomainID=0) if ipfix else \
            NetflowHeaderV9(count=2, sysUptime=1000, unixSecs=int(now), packageSequence=0, SourceID=0)
        out = bytes(NetflowHeader(version=10 if ipfix else 9) / header / template / data)
        if ipfix:                             # scapy 2.5 pads the data set after it computed the message length
            out = out[:2] + struct.pack(">H", len(out)) + out[4:]
        return out
    if export == "sflow":
        return _sflow(src, endpoint, v6, agent)
    raise ValueError(f"unknown export {export!r} (known: {', '.join(EXPORTS)})")


def _sflow(src: str, dst: str, v6: bool, agent: str) -> bytes:
    """sFlow v5: one flow sample (rate 1) with one raw packet header record of an HTTP request.
    scapy writes the sampled frame (IPv4 or IPv6, real lengths and checksums, as a host sends it:
    what tshark checks); build.py the sFlow datagram around it."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    from .build import flow_sample, raw_header, sflow

    http = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: " + dst.encode() + b"\r\n\r\n"
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    frame = bytes(Ether(src="02:00:00:00:01:69", dst="02:00:00:00:02:54") / ip
                  / TCP(sport=PROBE_PORT, dport=80, flags="PA", seq=1, ack=1) / http)
    sample = flow_sample(1, [raw_header(frame)], rate=1, source=1, pool=1, in_if=1, out_if=2)
    return sflow([sample], seq=1, agent=agent)


def send(host: str, port: int, export: str, endpoint: str = "169.254.169.254") -> tuple[bytes, tuple]:
    """Build and send one test export to host:port over UDP; (datagram, peer address)."""
    family, stype, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, stype, proto) as sock:
        sock.connect(addr)
        local = sock.getsockname()[0]
        agent = local if ipaddress.ip_address(local).version == 4 else "0.0.0.0"
        data = build(export, endpoint, agent=agent)
        sock.send(data)
    return data, addr
