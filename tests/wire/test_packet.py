"""wire/packet.py: the sampled-packet kernel against its slow oracle (tests/support/oracle.py packet_one) on
hypothesis-built packets cut at any length, and the HTTP rules as a table of cases."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from imds_flow.wire.packet import ETHERNET, IPV4, IPV6, parse_one
from tests.support.oracle import packet_one

URLS = ("/latest/meta-data", "/latest/api/token")
NAMES = ("x-aws-ec2-metadata-token", "x-aws-ec2-metadata-token-ttl-seconds", "metadata-flavor")


def _case(draw_text: str, flip: list[bool]) -> str:
    return "".join(c.upper() if f else c for c, f in zip(draw_text, flip + [False] * len(draw_text)))


@st.composite
def http_payloads(draw) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=80))
    method = draw(st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE", "OPTIONS", "get", "GETX", "HTTP/1.1"]))
    target = draw(st.sampled_from([
        "/latest/meta-data/iam/security-credentials/", "/latest/api/token", "/LATEST/Meta-Data", "/",
        "http://169.254.169.254/latest/meta-data/", "/index.html?q=/latest/api/token", "/other", "",
        "/latest/meta", "*"]))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    line = method.encode() + b" " + target.encode() + draw(st.sampled_from([b" HTTP/1.1", b" HTTP/1.0", b"", b"  "]))
    fields = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["Host", "X-aws-ec2-metadata-token", "x-aws-ec2-metadata-token-ttl-seconds",
                                     "Metadata-Flavor", "X-aws-ec2-metadata-tokenX", "User-Agent",
                                     " x-aws-ec2-metadata-token", "x-aws-ec2-metadata-token "]))
        value = draw(st.sampled_from(["169.254.169.254", "AQAEAxyz==", "21600", "x-aws-ec2-metadata-token: 1",
                                      "Google", "/latest/meta-data"]))
        fields.append(name.encode() + b": " + value.encode())
    body = draw(st.sampled_from([b"", b"x-aws-ec2-metadata-token: t\r\n", b"GET /latest/meta-data HTTP/1.1\r\n"]))
    return eol.join([line, *fields, b"", b""]) + body


@st.composite
def packets(draw) -> tuple[bytes, int]:
    payload = draw(http_payloads())
    proto = draw(st.sampled_from([6, 6, 6, 17, 1, 58, 132, 47]))
    if proto == 6:
        doff = draw(st.integers(5, 8))
        l4 = struct.pack(">HHIIBBHHH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535)), 0, 0, doff << 4,
                         0x18, 1024, 0, 0) + draw(st.binary(min_size=(doff - 5) * 4, max_size=(doff - 5) * 4)) + payload
    elif proto in (17, 132):
        l4 = struct.pack(">HHHH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535)), 8 + len(payload), 0) + payload
    else:
        l4 = struct.pack(">BBH", draw(st.integers(0, 255)), draw(st.integers(0, 255)), 0) + payload
    v6 = draw(st.booleans())
    frag = draw(st.sampled_from([0, 0, 0, 1, 0x2000]))
    if v6:
        exts, nxt = b"", proto
        for h in reversed(draw(st.lists(st.sampled_from([0, 43, 60, 44, 51]), max_size=3))):
            if h == 44:
                exts = struct.pack(">BBHI", nxt, 0, frag << 3 if frag != 0x2000 else 1, 7) + exts
            elif h == 51:
                exts = struct.pack(">BB", nxt, 1) + bytes(10) + exts
            else:
                exts = struct.pack(">BB", nxt, 0) + bytes(6) + exts
            nxt = h
        src, dst = draw(st.binary(min_size=16, max_size=16)), draw(st.binary(min_size=16, max_size=16))
        plen = len(exts) + len(l4) + draw(st.sampled_from([0, 0, -10, 30]))
        ip = struct.pack(">IHBB", 0x60000000, max(plen, 0) & 0xFFFF, nxt, 64) + src + dst + exts + l4
        et, kind = 0x86DD, IPV6
    else:
        ihl = draw(st.integers(5, 7))
        opts = draw(st.binary(min_size=(ihl - 5) * 4, max_size=(ihl - 5) * 4))
        total = ihl * 4 + len(l4) + draw(st.sampled_from([0, 0, -10, 30]))
        ip = struct.pack(">BBHHHBB", 0x40 | ihl, 0, max(total, 0) & 0xFFFF, 0, frag, 64, proto) + b"\0\0" + \
            draw(st.binary(min_size=8, max_size=8)) + opts + l4
        et, kind = 0x0800, IPV4
    if draw(st.booleans()):
        tags = b""
        for _ in range(draw(st.sampled_from([0, 1, 2, 3, 3, 4, 7, 8]))):
            tags += struct.pack(">HH", draw(st.sampled_from([0x8100, 0x88A8, 0x9100])), draw(st.integers(0, 65535)))
        et = draw(st.sampled_from([et, et, et, 0x0806]))
        data = bytes(12) + tags[:2] + tags[2:] + struct.pack(">H", et) + ip if tags else bytes(12) + struct.pack(">H", et) + ip
        if tags:   # the first tag's TPID sits where the ethertype would
            data = bytes(12) + tags + struct.pack(">H", et) + ip
        kind = ETHERNET
    else:
        data = ip
    cut = draw(st.integers(0, len(data)))
    return data[:cut] if draw(st.booleans()) else data, kind


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets())
def test_kernel_equals_oracle(pk):
    data, kind = pk
    assert parse_one(data, kind, URLS, NAMES) == packet_one(data, kind, URLS, NAMES)


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([ETHERNET, IPV4, IPV6, 0, 7]))
def test_any_bytes(data, kind):
    """Any bytes: a result or None, never an error; the same as the oracle."""
    assert parse_one(data, kind, URLS, NAMES) == packet_one(data, kind, URLS, NAMES)


def _frame(payload: bytes, dst=b"\xa9\xfe\xa9\xfe", vlans=()) -> bytes:
    tcp = struct.pack(">HHIIBBHHH", 40000, 80, 0, 0, 0x50, 0x18, 512, 0, 0)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0, 64, 6, 0, b"\x0a\x00\x00\x05", dst)
    tags = b"".join(struct.pack(">HH", 0x8100, v) for v in vlans)
    return bytes(12) + tags + b"\x08\x00" + ip + tcp + payload


# payload -> (method, target, url index, header names): the HTTP rules
CASES = [
    (b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n", ("GET", b"/latest/meta-data/", 0, [])),
    (b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n",
     ("PUT", b"/latest/api/token", 1, ["x-aws-ec2-metadata-token-ttl-seconds"])),
    (b"GET http://169.254.169.254/latest/meta-data/iam HTTP/1.1\r\n", ("GET", b"http://169.254.169.254/latest/meta-data/iam", 0, [])),
    (b"GET /LaTeSt/META-data", ("GET", b"/LaTeSt/META-data", 0, [])),                        # cut in the target
    (b"GET /latest/me", ("GET", b"/latest/me", -1, [])),                                      # cut before the path is whole
    (b"GET / HTTP/1.1\r\nx-AWS-ec2-metadata-TOKEN: AQAE\r\n", ("GET", b"/", -1, ["x-aws-ec2-metadata-token"])),
    (b"GET / HTTP/1.1\r\nX-aws-ec2-metadata-tok", ("GET", b"/", -1, [])),                     # name cut: not seen whole
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token:", ("GET", b"/", -1, ["x-aws-ec2-metadata-token"])),
    (b"GET / HTTP/1.1\r\nUser-Agent: x-aws-ec2-metadata-token: 1\r\n", ("GET", b"/", -1, [])),  # in a value
    (b"POST /x HTTP/1.1\r\n\r\nX-aws-ec2-metadata-token: 1\r\n", ("POST", b"/x", -1, [])),        # in the body
    (b"POST /upload HTTP/1.1\r\n\r\n/latest/meta-data", ("POST", b"/upload", -1, [])),
    (b"HTTP/1.1 200 OK\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n/latest/meta-data", None),  # a response
    (b"get /latest/meta-data HTTP/1.1\r\n", None),                                            # methods are case-sensitive
    (b"XGET /latest/meta-data HTTP/1.1\r\n", None),
    (b"GET  /latest/meta-data HTTP/1.1\r\n", None),                                           # empty target
    (b"GET /?r=/latest/api/token HTTP/1.1\r\n", ("GET", b"/?r=/latest/api/token", 1, [])),
    (b"GET / HTTP/1.1\nmetadata-flavor: Google\n\n", ("GET", b"/", -1, ["metadata-flavor"])),  # bare LF
]


@pytest.mark.parametrize("payload,want", CASES)
def test_http_rules(payload, want):
    got = parse_one(_frame(payload, dst=b"\x0a\x00\x00\x09"), ETHERNET, URLS, NAMES)
    assert got is not None and got["dst"] == "10.0.0.9"
    assert (None if got["method"] is None else (got["method"], got["target"], got["url"], got["headers"])) == want
    assert packet_one(_frame(payload, dst=b"\x0a\x00\x00\x09"), ETHERNET, URLS, NAMES) == got


def test_vlans_and_addresses():
    got = parse_one(_frame(b"", vlans=(100, 0x2000 | 200)), ETHERNET)
    assert got["vlans"] == [100, 200] and got["dst"] == "169.254.169.254" and got["src"] == "10.0.0.5"
    assert (got["sport"], got["dport"], got["proto"]) == (40000, 80, 6)
    assert parse_one(_frame(b"", vlans=(100,)), ETHERNET)["vlans"] == [100, -1]
    assert parse_one(_frame(b""), ETHERNET)["vlans"] == [-1, -1]


@pytest.mark.parametrize("tags,want", [
    ((100, 0x2000 | 200, 300), [100, 200, 300]),                 # a third tag: vlan_more
    ((100, 200, 0xF000 | 300, 4095), [100, 200, 300, 4095]),     # PCP / DEI bits are not the id
    ((1, 2, 0, 0), [1, 2, 0, 0]),                                # VLAN 0 in vlan_more is an id, not "absent"
    (tuple(range(1, 10)), [1, 2, 3, 4, 5, 6, 7]),                # tags 8 and 9 walked, not recorded
])
def test_vlans_past_the_second(tags, want):
    """Every tag's id up to the seventh is recorded (the 3rd to 7th in vlan_more), and the walk
    still finds the IP header behind any number of tags."""
    got = parse_one(_frame(b"GET / HTTP/1.1\r\n", vlans=tags), ETHERNET)
    assert got["vlans"] == want
    assert (got["dst"], got["method"], got["target"]) == ("169.254.169.254", "GET", b"/")
    assert packet_one(_frame(b"GET / HTTP/1.1\r\n", vlans=tags), ETHERNET) == got


# the kernel compares a field name only where a configured name's length ends in ':'; a name that is
# no token (a caller's, not the config's) must still match only a name seen whole, as the oracle says
ODD_NAMES = ("a b", "x:y", "host", "ho", "x-aws-ec2-metadata-token", "user-agent\t")


@pytest.mark.parametrize("fields", [
    b"a b: 1\r\nx:y: 2\r\nHost: 3\r\n", b"host:x\r\nho:st\r\n", b"Ho: 1\r\nHOST : 2\r\nuser-agent\t: 3\r\n",
    b"X-aws-ec2-metadata-token:x-aws-ec2-metadata-token:\r\n", b"x:y\r\n",
])
def test_header_names_that_are_no_token(fields):
    data = _frame(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")
    assert parse_one(data, ETHERNET, URLS, ODD_NAMES) == packet_one(data, ETHERNET, URLS, ODD_NAMES)


# the URL search tries eight positions a step and compares only where a pattern's first two bytes
# may be (a letter in either case, anything else exactly): targets of pattern pieces in mixed case,
# with bytes one case bit away from non-letters ('@' / '`', '[' / '{'), against the oracle
_PIECES = ["/latest", "/LATEST", "/meta-data", "-data", "api/token", "/l", "/L", "l", "a", "@", "`", "[", "{",
           "/", "x", "%2F", "?q=", "0123456789"]
_PATTERNS = ["/latest/meta-data", "/latest/api/token", "/l", "l", "@", "[", "`a", "-data", "a", "token"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14), st.lists(st.sampled_from(_PATTERNS), max_size=4),
       st.sampled_from([b" HTTP/1.1\r\n", b""]))
def test_url_search(pieces, urls, tail):
    data = _frame(b"GET " + "".join(pieces).encode() + tail, dst=b"\x0a\x00\x00\x09")
    got = parse_one(data, ETHERNET, tuple(urls), NAMES)
    assert got == packet_one(data, ETHERNET, tuple(urls), NAMES)
