"""The information elements we decode, as data: (enterprise number, element id) -> slot.

Rules: a template field whose (PEN, id) is listed fills its slot; every other field is skipped by
length. NetFlow v9 has no enterprise bit, so its ids >= 32768 are plain ids with PEN 0 (nProbe's
v9 HTTP_URL 57652 is listed as such). A slot accepts only the lengths in SLOT_KIND; a field of
another length is skipped (H3C types a 2-byte field as an IPv4 address). Duplicates: the first
occurrence of a slot in a template wins; later ones are skipped.
"""
from __future__ import annotations

__all__ = ["SLOTS", "SLOT", "NSLOT", "ELEMENTS", "URL_SLOTS", "accepts"]

# Slot names in the order the plan arrays hold them. "u" = unsigned 1..8 bytes, "a4" = 4-byte
# IPv4 address, "a16" = 16-byte IPv6 address, "s" = octets of any length (variable-length ok).
_SLOT_KINDS = (
    ("src4", "a4"), ("dst4", "a4"), ("src6", "a16"), ("dst6", "a16"),
    ("nsrc4", "a4"), ("ndst4", "a4"), ("nsrc6", "a16"), ("ndst6", "a16"),
    ("sport", "u"), ("dport", "u"), ("sport_l4", "u"), ("dport_l4", "u"), ("icmp", "u"), ("proto", "u"),
    ("vlan_src", "u"), ("vlan_dst", "u"), ("vlan_dot1q", "u"), ("vlan_cust", "u"),
    ("bytes", "u"), ("packets", "u"), ("bytes_total", "u"), ("packets_total", "u"),
    ("bytes_init", "u"), ("bytes_resp", "u"), ("packets_init", "u"), ("packets_resp", "u"),
    ("first_up", "u"), ("last_up", "u"), ("sys_init_ms", "u"),
    ("start_s", "u"), ("end_s", "u"), ("start_ms", "u"), ("end_ms", "u"),
    ("start_us", "u"), ("end_us", "u"), ("start_ns", "u"), ("end_ns", "u"),
    ("start_delta_us", "u"), ("end_delta_us", "u"),
    ("in_if", "u"), ("out_if", "u"),
    ("sampler_id", "u"), ("sampling_interval", "u"), ("sampler_random_interval", "u"),
    ("packet_interval", "u"), ("packet_space", "u"), ("sampling_size", "u"), ("sampling_population", "u"),
    ("url0", "s"), ("url1", "s"), ("url2", "s"), ("url3", "s"), ("url4", "s"), ("url5", "s"),
    # sampled packet content: HTTP method, RFC 7133 packet sections (wire/packet.py walks them)
    ("http_method", "s"), ("section_ip", "s"), ("section_l2", "s"), ("section_payload", "s"),
    # the request's Host as the exporter decoded it: shown in the alert, never searched
    ("http_host", "s"),
)
SLOTS = tuple(name for name, _ in _SLOT_KINDS)
SLOT = {name: i for i, name in enumerate(SLOTS)}
NSLOT = len(SLOTS)
SLOT_KIND = dict(_SLOT_KINDS)
URL_SLOTS = tuple(SLOT[f"url{i}"] for i in range(6))

IANA = 0
CISCO = 9
IXIA = 3054
CITRIX = 5951
PROCERA = 15397
NTOP = 35632

ELEMENTS: dict[tuple[int, int], str] = {
    (IANA, 8): "src4", (IANA, 12): "dst4", (IANA, 27): "src6", (IANA, 28): "dst6",
    (IANA, 225): "nsrc4", (IANA, 226): "ndst4", (IANA, 281): "nsrc6", (IANA, 282): "ndst6",
    (IANA, 40001): "nsrc4", (IANA, 40002): "ndst4",     # Cisco ASA NSEL v9 NF_F_XLATE_{SRC,DST}_ADDR_IPV4
    (IANA, 40057): "nsrc6", (IANA, 40058): "ndst6",     # ... and _IPV6 (plain v9 ids >= 32768)
    (IANA, 7): "sport", (IANA, 11): "dport",
    (IANA, 180): "sport_l4", (IANA, 181): "dport_l4",     # udpSourcePort / udpDestinationPort
    (IANA, 182): "sport_l4", (IANA, 183): "dport_l4",     # tcpSourcePort / tcpDestinationPort
    (IANA, 32): "icmp", (IANA, 139): "icmp",              # icmpTypeCodeIPv4 / IPv6: type * 256 + code
    (IANA, 4): "proto",
    (IANA, 58): "vlan_src", (IANA, 59): "vlan_dst", (IANA, 243): "vlan_dot1q", (IANA, 245): "vlan_cust",
    (IANA, 1): "bytes", (IANA, 2): "packets", (IANA, 85): "bytes_total", (IANA, 86): "packets_total",
    (IANA, 231): "bytes_init", (IANA, 232): "bytes_resp",  # Cisco ASA NSEL fwd/rev_flow_delta_bytes
    (IANA, 298): "packets_init", (IANA, 299): "packets_resp",
    (IANA, 22): "first_up", (IANA, 21): "last_up", (IANA, 160): "sys_init_ms",
    (IANA, 150): "start_s", (IANA, 151): "end_s", (IANA, 152): "start_ms", (IANA, 153): "end_ms",
    (IANA, 154): "start_us", (IANA, 155): "end_us", (IANA, 156): "start_ns", (IANA, 157): "end_ns",
    (IANA, 158): "start_delta_us", (IANA, 159): "end_delta_us",
    (IANA, 10): "in_if", (IANA, 14): "out_if",
    # sampling (options data and, rarely, flow data)
    (IANA, 48): "sampler_id", (IANA, 302): "sampler_id",  # samplerId (v9 FLOW_SAMPLER_ID) / selectorId
    (IANA, 34): "sampling_interval", (IANA, 50): "sampler_random_interval",
    (IANA, 305): "packet_interval", (IANA, 306): "packet_space",
    (IANA, 309): "sampling_size", (IANA, 310): "sampling_population",
    # HTTP request target / URL: configured substrings are searched in these
    (IANA, 461): "url0",          # httpRequestTarget (IANA; 459 method, 460 host, 462 version)
    (NTOP, 180): "url1",          # nProbe HTTP_URL (IPFIX, PEN 35632)
    (IANA, 57652): "url1",        # nProbe HTTP_URL in NetFlow v9 (57472 + 180, a plain id)
    (CITRIX, 130): "url2",        # netscalerHttpReqUrl
    (PROCERA, 22): "url3",        # proceraHttpUrl
    (IXIA, 184): "url4",          # Ixia HTTP URI
    (CISCO, 9357): "url5",        # ciscoAppHTTPUriStatistics (AVC)
    (IANA, 459): "http_method",   # httpRequestMethod
    (NTOP, 360): "http_method",   # nProbe HTTP_METHOD (IPFIX, PEN 35632)
    (IANA, 57832): "http_method", # nProbe HTTP_METHOD in NetFlow v9 (57472 + 360, a plain id)
    (IANA, 460): "http_host",     # httpRequestHost
    # nProbe's HTTP_HOST is NTOP_BASE_ID (57472) + 187 in ntopng's include/ntop_flow.h, "the
    # companion file of nProbe/template.h" (HTTP_URL + 180 and HTTP_METHOD + 360 there too)
    (NTOP, 187): "http_host",     # nProbe HTTP_HOST (IPFIX, PEN 35632)
    (IANA, 57659): "http_host",   # nProbe HTTP_HOST in NetFlow v9 (57472 + 187, a plain id)
    (IANA, 313): "section_ip",    # ipHeaderPacketSection (RFC 7133): from the IP header on
    (IANA, 315): "section_l2",    # dataLinkFrameSection (RFC 7133): from the Ethernet header on
    (IANA, 314): "section_payload",  # ipPayloadPacketSection (RFC 7133): from the transport header on
}


def accepts(slot: str, length: int) -> bool:
    """Whether a field of `length` bytes (-1: variable) can fill `slot`."""
    kind = SLOT_KIND[slot]
    if kind == "a4":
        return length == 4
    if kind == "a16":
        return length == 16
    if kind == "u":
        return 1 <= length <= 8
    return True
