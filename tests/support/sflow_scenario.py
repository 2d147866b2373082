"""A scapy capture of sampled-HTTP situations for sFlow, each frame with the alert it must give.

Every frame is one TCP segment (sFlow samples packets, not flows) and carries its expectation
explicitly: None, or the alert fields it must produce (endpoint, direction, signal, method, url,
headers). pmacctd's sfprobe samples at most 128 bytes of a frame: each request is written so that
what must be seen fits in them, and one case relies on a header name being cut off.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

__all__ = ["Case", "build", "write_pcap", "SUPPRESS_SUBNETS", "SUPPRESS_VLANS", "CONFIG_EXTRA"]

EPOCH = 1_700_000_000
SUPPRESS_SUBNETS = ("10.66.0.0/16",)
SUPPRESS_VLANS = (666,)
CONFIG_EXTRA = f'''[suppress]
source_subnets = {list(SUPPRESS_SUBNETS)!r}
vlans = {list(SUPPRESS_VLANS)!r}
[alerts]
fold_window_seconds = 0
'''.replace("'", '"')

IMDS4, IMDS6 = "169.254.169.254", "fd00:ec2::254"


@dataclass
class Case:
    label: str
    frame: Packet
    want: dict | None           # alert fields the frame must give, or None


def _frame(src: str, dst: str, sport: int, dport: int, payload: bytes, vlan: int | None = None,
           flags: str = "PA") -> Packet:
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst, id=1)
    eth = Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")
    l2 = eth / Dot1Q(vlan=vlan) if vlan is not None else eth
    return l2 / ip / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=1) / Raw(payload)


def _want(src, dst, sport, dport, endpoint, direction="request", signal="address", method=None, url=None,
          headers=(), vlan=None, proto=6):
    return {"src": src, "dst": dst, "sport": sport, "dport": dport, "proto": proto, "endpoint": endpoint,
            "direction": direction, "signal": signal, "http_method": method, "url": url, "headers": list(headers),
            "vlan": vlan, "http_host": None}      # a sampled Host header is a header value: never copied


def build() -> list[Case]:
    cases: list[Case] = []

    def add(label, src, dst, sport, dport, payload, want, vlan=None, flags="PA"):
        cases.append(Case(label, _frame(src, dst, sport, dport, payload, vlan, flags), want))

    creds = "/latest/meta-data/iam/security-credentials/"
    add("imdsv1 get", "10.1.0.5", IMDS4, 40001, 80,
        f"GET {creds} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n".encode(),
        _want("10.1.0.5", IMDS4, 40001, 80, "aws-imds-ipv4", method="GET", url=creds))
    add("imdsv2 token put", "10.1.0.6", IMDS4, 40002, 80,
        b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n",
        _want("10.1.0.6", IMDS4, 40002, 80, "aws-imds-ipv4", method="PUT", url="/latest/api/token",
              headers=["x-aws-ec2-metadata-token-ttl-seconds"]))
    add("imdsv2 get with token", "10.1.0.7", IMDS4, 40003, 80,
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\nX-aws-ec2-metadata-token: AQAEAsecretsecret==\r\n\r\n",
        _want("10.1.0.7", IMDS4, 40003, 80, "aws-imds-ipv4", method="GET", url="/latest/meta-data/ami-id",
              headers=["x-aws-ec2-metadata-token"]))
    add("token header cut by the sample", "10.1.0.8", IMDS4, 40004, 80,
        b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: aws-sdk-go/1.44\r\n"
        b"X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n",
        _want("10.1.0.8", IMDS4, 40004, 80, "aws-imds-ipv4", method="PUT", url="/latest/api/token"))
    add("response from the endpoint", IMDS4, "10.1.0.5", 80, 40001,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{\"AccessKeyId\": \"ASIAEXAMPLE\"}",
        _want(IMDS4, "10.1.0.5", 80, 40001, "aws-imds-ipv4", direction="response"))
    add("rogue service at an ordinary address", "10.1.0.9", "10.2.0.50", 40005, 8080,
        b"GET /latest/meta-data/iam/security-credentials/role HTTP/1.1\r\nHost: 10.2.0.50\r\n\r\n",
        _want("10.1.0.9", "10.2.0.50", 40005, 8080, "url:/latest/meta-data", signal="url", method="GET",
              url="/latest/meta-data/iam/security-credentials/role"))
    add("rogue token request, upper case path", "10.1.0.10", "10.2.0.50", 40006, 8080,
        b"PUT /LATEST/API/TOKEN HTTP/1.1\r\n\r\n",
        _want("10.1.0.10", "10.2.0.50", 40006, 8080, "url:/latest/api/token", signal="url", method="PUT",
              url="/LATEST/API/TOKEN"))
    add("token header only", "10.1.0.11", "10.2.0.51", 40007, 80,
        b"GET /v1/config HTTP/1.1\r\nx-aws-ec2-metadata-token: AQAEAsecret==\r\n\r\n",
        _want("10.1.0.11", "10.2.0.51", 40007, 80, "header:x-aws-ec2-metadata-token", signal="header",
              method="GET", url="/v1/config", headers=["x-aws-ec2-metadata-token"]))
    add("through a forward proxy", "10.1.0.12", "10.3.0.3", 40008, 3128,
        b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
        _want("10.1.0.12", "10.3.0.3", 40008, 3128, "url:/latest/meta-data", signal="url", method="GET",
              url="http://169.254.169.254/latest/meta-data/"))
    add("ipv6 endpoint", "fd00:1::5", IMDS6, 40009, 80,
        b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n",
        _want("fd00:1::5", IMDS6, 40009, 80, "aws-imds-ipv6", method="GET", url="/latest/meta-data/"))
    add("vlan tagged", "10.1.0.13", IMDS4, 40010, 80, b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n",
        _want("10.1.0.13", IMDS4, 40010, 80, "aws-imds-ipv4", method="GET", url="/latest/meta-data/", vlan=20),
        vlan=20)
    add("rogue, vlan tagged", "10.1.0.14", "10.2.0.52", 40011, 80, b"GET /latest/api/token HTTP/1.1\r\n\r\n",
        _want("10.1.0.14", "10.2.0.52", 40011, 80, "url:/latest/api/token", signal="url", method="GET",
              url="/latest/api/token", vlan=30), vlan=30)
    # silenced
    add("suppressed subnet", "10.66.0.5", IMDS4, 40012, 80, b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n", None)
    add("suppressed subnet, rogue", "10.66.0.6", "10.2.0.50", 40013, 80, b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n",
        None)
    add("suppressed vlan", "10.1.0.15", IMDS4, 40014, 80, b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n", None, vlan=666)
    # decoys: the strings outside a request line or a header name
    add("decoy: path in a POST body", "10.1.0.16", "10.2.0.60", 40015, 80,
        b"POST /upload HTTP/1.1\r\n\r\nGET /latest/meta-data/ x-aws-ec2-metadata-token: 1", None)
    add("decoy: header name in a header value", "10.1.0.17", "10.2.0.60", 40016, 80,
        b"GET /index.html HTTP/1.1\r\nReferer: x-aws-ec2-metadata-token: /latest/api/token\r\n\r\n", None)
    add("decoy: response carrying both", "10.2.0.60", "10.1.0.18", 80, 40017,
        b"HTTP/1.1 200 OK\r\nX-aws-ec2-metadata-token: t\r\n\r\n/latest/meta-data/", None)
    add("decoy: similar header name", "10.1.0.19", "10.2.0.60", 40018, 80,
        b"GET /a HTTP/1.1\r\nX-aws-ec2-metadata-tokens: 1\r\n\r\n", None)
    add("decoy: lower-case method", "10.1.0.20", "10.2.0.60", 40019, 80, b"get /latest/meta-data/ HTTP/1.1\r\n\r\n",
        None)
    add("ordinary web", "10.1.0.21", "10.2.0.60", 40020, 80, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", None)
    for i in range(6):        # filler: pmacctd may not export the last packets of a file before it exits
        add(f"filler {i}", "10.1.0.30", "10.2.0.70", 41000 + i, 443, bytes(40), None)
    for i, case in enumerate(cases):
        case.frame.time = EPOCH + i * 0.01
    return cases


def write_pcap(cases: list[Case], path: str | Path) -> Path:
    wrpcap(str(path), [c.frame for c in cases])
    return Path(path)
