"""A deterministic capture of realistic traffic for the detector, and the slow oracle of what must alert.

Rules of the oracle (ipaddress only, one decision per unidirectional flow record, as exporters report them):
destination in an endpoint network -> "request"; else source in one -> "response"; else nothing.
The local side (the address that is not the endpoint) in a suppressed subnet, or the flow's VLAN in a
suppressed VLAN (only when the export carries VLANs), silences the alert.

Exporter conventions the oracle follows (checked against softflowd 1.1.0 and pmacct 1.7.7 in
tests/e2e/test_support.py): ICMP / ICMPv6 flows carry sport 0 and dport type*256+code; bytes are IP-layer
bytes (IPv4 total length, IPv6 payload length + 40), or, with padding_counted, softflowd's count, which
also includes the Ethernet padding of short frames.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Padding, Raw
from scapy.utils import wrpcap

__all__ = [
    "ENDPOINTS",
    "EPOCH",
    "IMDS_V4",
    "IMDS_V6",
    "SUPPRESS_SUBNETS",
    "SUPPRESS_VLANS",
    "Flow",
    "Scenario",
    "build_scenario",
    "expected_alert_flows",
    "flow_key",
]

IMDS_V4 = "169.254.169.254"
IMDS_V6 = "fd00:ec2::254"
ENDPOINTS: tuple[tuple[str, str], ...] = (("aws-imds-ipv4", IMDS_V4), ("aws-imds-ipv6", IMDS_V6))
SUPPRESS_SUBNETS: tuple[str, ...] = ("10.99.0.0/16", "2001:db8:99::/48")
SUPPRESS_VLANS: tuple[int, ...] = (99,)

EPOCH = 1_700_000_000  # pcap time of the scenario's first microsecond (2023-11-14T22:13:20Z)
_SPAN_US = 20_000_000  # conversations start within the first ~18 s; the last packet lands before 20 s
_ETH_MIN = 60  # minimum Ethernet frame without FCS: short frames carry padding, as on a real wire


@dataclass(frozen=True)
class Flow:
    """One direction of one conversation: what an exporter reports as one flow record.

    ``role`` is the scenario author's intent ("request" to / "response" from the metadata endpoint,
    None for ordinary traffic); the oracle does not read it, it decides from addresses alone.
    ICMP flows use the exporter convention: sport 0, dport type*256+code.
    """

    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    vlan: int | None
    role: str | None
    label: str
    frames: tuple[Packet, ...] = field(default=(), compare=False, repr=False)

    @property
    def packets(self) -> int:
        return len(self.frames)

    @property
    def ip_bytes(self) -> int:
        """Bytes of the IP layer: IPv4 total length, IPv6 payload length plus the 40-byte header."""
        return sum(_ip_length(frame) for frame in self.frames)

    @property
    def frame_l3_bytes(self) -> int:
        """Captured bytes after the Ethernet / 802.1Q header: IP bytes plus any Ethernet padding."""
        return sum(len(frame) - (18 if Dot1Q in frame else 14) for frame in self.frames)

    @property
    def key(self) -> tuple:
        return (self.src, self.dst, self.proto, self.sport, self.dport, self.vlan)


@dataclass(frozen=True)
class Scenario:
    seed: int
    flows: tuple[Flow, ...]

    def frames(self) -> list[Packet]:
        """Every frame of every flow, in time order (timestamps are unique and increasing)."""
        return sorted((frame for flow in self.flows for frame in flow.frames), key=lambda f: f.time)

    @property
    def packet_count(self) -> int:
        return sum(flow.packets for flow in self.flows)

    def write_pcap(self, path: str | Path) -> Path:
        path = Path(path)
        wrpcap(str(path), self.frames())  # Ethernet link type, microsecond timestamps
        return path


def flow_key(record: dict) -> tuple:
    """The identity of a flow record: its 5-tuple and VLAN, addresses normalised by ipaddress."""
    return (
        str(ipaddress.ip_address(record["src"])),
        str(ipaddress.ip_address(record["dst"])),
        int(record["proto"]),
        int(record["sport"]),
        int(record["dport"]),
        record["vlan"],
    )


def _ip_length(frame: Packet) -> int:
    if IP in frame:
        return frame[IP].len
    return frame[IPv6].plen + 40


# --- the oracle -------------------------------------------------------------------------------------


def expected_alert_flows(
    scenario: Scenario,
    endpoints: Iterable[tuple[str, str]] = ENDPOINTS,
    suppress_subnets: Iterable[str] = (),
    suppress_vlans: Iterable[int] = (),
    ipv6: bool = True,
    vlan_visible: bool = True,
    padding_counted: bool = False,
) -> list[dict]:
    """The flow records that must raise an alert, one dict per unidirectional flow record.

    ``ipv6=False`` drops IPv6 flows (NetFlow v5 cannot carry them); ``vlan_visible=False`` reports
    vlan None and ignores VLAN suppression (v5 has no VLAN field). Flows that share a 5-tuple and VLAN
    are one record, as in an exporter's cache; flows that differ only by VLAN stay separate records
    even when the VLAN is not visible. Suppression defaults to none: pass SUPPRESS_SUBNETS /
    SUPPRESS_VLANS for the scenario's intended policy. Sorted by key.

    ``bytes`` is IP-layer bytes (what pmacct and routers count). softflowd counts the captured bytes
    after the link-layer header, so Ethernet padding of short IPv4 frames (bare ACKs, FINs) is
    included: pass ``padding_counted=True`` to match it.
    """
    networks = [(name, ipaddress.ip_network(net, strict=False)) for name, net in endpoints]
    suppressed = [ipaddress.ip_network(net, strict=False) for net in suppress_subnets]
    quiet_vlans = set(suppress_vlans)

    records: dict[tuple, dict] = {}
    for flow in scenario.flows:
        src, dst = ipaddress.ip_address(flow.src), ipaddress.ip_address(flow.dst)
        if src.version == 6 and not ipv6:
            continue
        hit = _endpoint_of(dst, networks)
        direction, local = "request", src
        if hit is None:
            hit = _endpoint_of(src, networks)
            direction, local = "response", dst
        if hit is None:
            continue
        if any(local in net for net in suppressed):
            continue
        if vlan_visible and flow.vlan in quiet_vlans:
            continue
        record = records.get(flow.key)
        if record is None:
            records[flow.key] = record = {
                "src": str(src),
                "dst": str(dst),
                "sport": flow.sport,
                "dport": flow.dport,
                "proto": flow.proto,
                "vlan": flow.vlan if vlan_visible else None,
                "endpoint": hit,
                "direction": direction,
                "packets": 0,
                "bytes": 0,
            }
        record["packets"] += flow.packets
        record["bytes"] += flow.frame_l3_bytes if padding_counted else flow.ip_bytes
    return [records[key] for key in sorted(records, key=_sortable)]


def _endpoint_of(address, networks) -> str | None:
    for name, net in networks:
        if address in net:
            return name
    return None


def _sortable(key: tuple) -> tuple:
    return tuple(-1 if part is None else part for part in key)


# --- building the traffic ---------------------------------------------------------------------------

_HTTP_GET = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: aws-sdk-go/1.44.0 (go1.20; linux; amd64)\r\n"
    "Accept: */*\r\n{extra}\r\n"
)
_HTTP_PUT_TOKEN = (
    "PUT /latest/api/token HTTP/1.1\r\nHost: {host}\r\nUser-Agent: aws-cli/2.15.0\r\n"
    "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n"
)
_HTTP_OK = (
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\n"
    "Server: EC2ws\r\nConnection: close\r\n{extra}\r\n{body}"
)
_META_INDEX = (
    "ami-id\nami-launch-index\nami-manifest-path\nblock-device-mapping/\nhostname\n"
    "iam/\ninstance-action\ninstance-id\ninstance-type\nlocal-hostname\nlocal-ipv4\nmac\n"
    "metrics/\nnetwork/\nplacement/\nprofile\npublic-hostname\npublic-ipv4\nreservation-id\n"
    "security-groups\nservices/"
)
_CREDENTIALS = (
    '{\n  "Code" : "Success",\n  "LastUpdated" : "2023-11-14T22:13:20Z",\n  "Type" : "AWS-HMAC",\n'
    '  "AccessKeyId" : "ASIAEXAMPLEEXAMPLE00",\n  "SecretAccessKey" : "example/example/example/example/exam",\n'
    '  "Token" : "IQoJb3JpZ2luX2VjEXAMPLE",\n  "Expiration" : "2023-11-15T04:13:20Z"\n}'
)


class _Builder:
    """Frames of conversations with deterministic addresses, ports, sequence numbers and times."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.flows: list[Flow] = []
        self._used_times: set[int] = set()
        self._used_ports: set[int] = set()

    # -- plumbing --

    def ephemeral_port(self) -> int:
        while True:
            port = self.rng.randrange(32768, 61000)
            if port not in self._used_ports:
                self._used_ports.add(port)
                return port

    def start_time(self, at_s: float) -> int:
        """A start time in microseconds near ``at_s``, jittered by the seed."""
        return int(at_s * 1_000_000) + self.rng.randrange(0, 200_000)

    def _stamp(self, frame: Packet, t_us: int) -> Packet:
        while t_us in self._used_times:
            t_us += 1
        assert 0 <= t_us < _SPAN_US, t_us
        self._used_times.add(t_us)
        frame.time = EPOCH + t_us / 1_000_000
        return frame

    def frame(self, src: str, dst: str, l4: Packet, vlan: int | None, t_us: int) -> Packet:
        ip = IPv6(src=src, dst=dst, hlim=64) if ":" in src else IP(src=src, dst=dst, ttl=64, id=self.rng.randrange(65536))
        pkt = Ether(src=_mac(src), dst=_mac(dst))
        if vlan is not None:
            pkt = pkt / Dot1Q(vlan=vlan)
        frame = Ether(bytes(pkt / ip / l4))  # rebuild: lengths and checksums fixed, layers dissected
        short = _ETH_MIN - len(frame)
        if short > 0:
            frame = Ether(bytes(frame) + b"\x00" * short)
            assert Padding in frame
        return self._stamp(frame, t_us)

    def add(self, label: str, src, dst, proto, sport, dport, vlan, role, frames) -> None:
        if frames:
            self.flows.append(Flow(src, dst, proto, sport, dport, vlan, role, label, tuple(frames)))

    # -- conversations --

    def tcp(
        self,
        label: str,
        client: str,
        server: str,
        dport: int,
        exchanges: Sequence[tuple[bytes, bytes]],
        at_s: float,
        vlan: int | None = None,
        role: tuple[str | None, str | None] = (None, None),
        seen: str = "both",
        rtt_us: int = 800,
    ) -> None:
        """A TCP connection: handshake, request/answer exchanges, FIN from the server, FIN back.

        ``seen`` = "both" | "answers": "answers" keeps only the server's frames (an asymmetric route
        where the sensor sees only the fake endpoint answering).
        """
        sport = self.ephemeral_port()
        t = self.start_time(at_s)
        c_seq, s_seq = self.rng.randrange(2**32), self.rng.randrange(2**32)
        up: list[Packet] = []
        down: list[Packet] = []

        def send(frames, src, dst, sp, dp, flags, seq, ack, payload=b""):
            nonlocal t
            l4 = TCP(sport=sp, dport=dp, flags=flags, seq=seq % 2**32, ack=ack % 2**32, window=502)
            if "S" in flags:
                l4.window = 64240
                l4.options = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (t // 1000, 0)), ("NOP", None), ("WScale", 7)]
            if payload:
                l4 = l4 / Raw(payload)
            frames.append(self.frame(src, dst, l4, vlan, t))
            t += rtt_us // 2 + self.rng.randrange(0, 200)

        send(up, client, server, sport, dport, "S", c_seq, 0)
        c_seq += 1
        send(down, server, client, dport, sport, "SA", s_seq, c_seq)
        s_seq += 1
        send(up, client, server, sport, dport, "A", c_seq, s_seq)
        for request, answer in exchanges:
            send(up, client, server, sport, dport, "PA", c_seq, s_seq, request)
            c_seq += len(request)
            for chunk_at in range(0, len(answer), 1400):
                chunk = answer[chunk_at : chunk_at + 1400]
                send(down, server, client, dport, sport, "PA", s_seq, c_seq, chunk)
                s_seq += len(chunk)
            send(up, client, server, sport, dport, "A", c_seq, s_seq)
        send(down, server, client, dport, sport, "FA", s_seq, c_seq)
        s_seq += 1
        send(up, client, server, sport, dport, "FA", c_seq, s_seq)
        c_seq += 1
        send(down, server, client, dport, sport, "A", s_seq, c_seq)

        if seen == "answers":
            up = []
        proto = 6
        self.add(label, client, server, proto, sport, dport, vlan, role[0], up)
        self.add(label, server, client, proto, dport, sport, vlan, role[1], down)

    def syn_unanswered(self, label: str, client: str, server: str, dport: int, at_s: float, vlan=None, role=None):
        """A client's SYN and its retransmissions (1 s, 2 s later) that nobody answers."""
        sport = self.ephemeral_port()
        t = self.start_time(at_s)
        seq = self.rng.randrange(2**32)
        frames = []
        for backoff in (0, 1_000_000, 2_000_000):
            t += backoff
            l4 = TCP(sport=sport, dport=dport, flags="S", seq=seq, window=64240, options=[("MSS", 1460), ("SAckOK", b"")])
            frames.append(self.frame(client, server, l4, vlan, t))
        self.add(label, client, server, 6, sport, dport, vlan, role, frames)

    def udp(self, label: str, client: str, server: str, dport: int, exchanges, at_s: float, vlan=None, role=(None, None)):
        sport = self.ephemeral_port()
        t = self.start_time(at_s)
        up, down = [], []
        for request, answer in exchanges:
            up.append(self.frame(client, server, UDP(sport=sport, dport=dport) / request, vlan, t))
            t += 400 + self.rng.randrange(0, 3000)
            if answer is not None:
                down.append(self.frame(server, client, UDP(sport=dport, dport=sport) / answer, vlan, t))
            t += 20_000 + self.rng.randrange(0, 50_000)
        self.add(label, client, server, 17, sport, dport, vlan, role[0], up)
        self.add(label, server, client, 17, dport, sport, vlan, role[1], down)

    def ping(self, label: str, client: str, server: str, count: int, at_s: float, vlan=None, role=(None, None)):
        """Echo requests and replies; each direction is its own flow (type differs: 8/0 or 128/129)."""
        t = self.start_time(at_s)
        ident = self.rng.randrange(65536)
        v6 = ":" in client
        proto, (req_type, rep_type) = (58, (128, 129)) if v6 else (1, (8, 0))
        up, down = [], []
        for seq in range(1, count + 1):
            data = bytes(range(16, 16 + 48))
            req = ICMPv6EchoRequest(id=ident, seq=seq, data=data) if v6 else ICMP(type=8, id=ident, seq=seq) / Raw(data)
            rep = ICMPv6EchoReply(id=ident, seq=seq, data=data) if v6 else ICMP(type=0, id=ident, seq=seq) / Raw(data)
            up.append(self.frame(client, server, req, vlan, t))
            down.append(self.frame(server, client, rep, vlan, t + 300 + self.rng.randrange(0, 300)))
            t += 1_000_000
        self.add(label, client, server, proto, 0, req_type * 256, vlan, role[0], up)
        self.add(label, server, client, proto, 0, rep_type * 256, vlan, role[1], down)


def _mac(address: str) -> str:
    packed = ipaddress.ip_address(address).packed
    return "02:00:" + ":".join(f"{b:02x}" for b in packed[-4:])


def _imds_get(host: str, path: str, body: str, token: str | None = None) -> tuple[bytes, bytes]:
    extra = f"X-aws-ec2-metadata-token: {token}\r\n" if token else ""
    request = _HTTP_GET.format(path=path, host=host, extra=extra).encode()
    answer = _HTTP_OK.format(length=len(body), body=body, extra="").encode()
    return request, answer


def _imds_token(host: str, token: str) -> tuple[bytes, bytes]:
    request = _HTTP_PUT_TOKEN.format(host=host).encode()
    extra = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds: 21600\r\n"
    answer = _HTTP_OK.format(length=len(token), body=token, extra=extra).encode()
    return request, answer


def _dns(rng: random.Random, name: str, address: str) -> tuple[bytes, bytes]:
    ident = rng.randrange(65536)
    query = DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype="A"))
    answer = DNS(id=ident, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype="A"),
                 an=DNSRR(rrname=name, type="A", ttl=300, rdata=address))
    return bytes(query), bytes(answer)


def build_scenario(seed: int = 0) -> Scenario:
    """A few dozen flows, a few hundred packets over ~20 s of pcap time; same seed, same bytes."""
    b = _Builder(seed)
    rng = b.rng
    v4, v6 = IMDS_V4, IMDS_V6
    host4, host6 = IMDS_V4, f"[{IMDS_V6}]"  # HTTP Host headers
    req = ("request", "response")  # roles of the client's and the endpoint's direction
    token = "AQAEAExampleTokenExampleTokenExampleTokenExample=="
    meta = "/latest/meta-data/"
    creds = "/latest/meta-data/iam/security-credentials/role-example"
    hello = bytes([0x16, 0x03, 0x01, 0x00, 0xC8]) + bytes(rng.randrange(256) for _ in range(200))
    server_hello = bytes([0x16, 0x03, 0x03, 0x0F, 0xA0]) + bytes(rng.randrange(256) for _ in range(2900))
    ntp = (b"\x23" + b"\x00" * 47, b"\x24\x02" + b"\x00" * 46)

    # Ordinary traffic: nothing here may alert.
    dns = [_dns(rng, "example.com.", "93.184.216.34"), _dns(rng, "aws.example.", "192.0.2.7")]
    b.udp("dns-v4", "10.1.0.10", "10.1.0.2", 53, dns, 0.2)
    b.tcp("https-v4", "10.1.0.10", "192.168.10.20", 443, [(hello, server_hello)], 0.7)
    b.tcp("https-v4-vlan20", "192.168.20.15", "10.2.0.80", 443, [(hello, server_hello[:900])], 1.5, vlan=20)
    b.udp("dns-v6", "2001:db8:10::10", "2001:db8:10::53", 53, [_dns(rng, "example.org.", "192.0.2.8")], 2.1)
    b.tcp("https-v6-vlan10", "2001:db8:10::10", "2001:db8:20::443", 443, [(hello, server_hello[:1800])], 2.6, vlan=10)
    b.ping("ping-v4", "10.1.0.10", "192.168.10.1", 3, 3.0)
    b.ping("ping-v6-vlan30", "2001:db8:30::7", "2001:db8:30::1", 2, 3.4, vlan=30)
    b.udp("ntp-v4-vlan30", "192.168.30.40", "10.3.0.123", 123, [ntp], 4.0, vlan=30)
    # Near misses: other link-local AWS services, neighbours of the endpoints.
    b.udp("aws-dns-169.254.169.253", "10.1.0.11", "169.254.169.253", 53, [_dns(rng, "s3.amazonaws.com.", "52.216.0.1")], 4.4)
    ecs = _imds_get("169.254.170.2", "/v2/metadata", "{}")
    b.tcp("ecs-task-metadata-169.254.170.2", "10.1.0.11", "169.254.170.2", 80, [ecs], 4.9)
    b.udp("aws-dns-fd00:ec2::253", "2001:db8:10::11", "fd00:ec2::253", 53, [_dns(rng, "sts.amazonaws.com.", "52.94.0.1")], 5.3)

    # IMDS over IPv4: IMDSv2 token then credentials on separate connections, as the SDKs do.
    index, instance_id = _imds_get(host4, meta, _META_INDEX), _imds_get(host4, meta + "instance-id", "i-0123456789abcdef0")
    b.tcp("imdsv2-token-v4", "10.1.0.10", v4, 80, [_imds_token(host4, token)], 6.0, role=req)
    b.tcp("imdsv2-creds-v4", "10.1.0.10", v4, 80, [_imds_get(host4, creds, _CREDENTIALS, token)], 6.4, role=req)
    b.tcp("imdsv1-get-v4-vlan10", "192.168.10.30", v4, 80, [index], 7.0, vlan=10, role=req)
    b.tcp("imdsv1-get-v4-vlan20", "10.2.0.50", v4, 80, [index, instance_id], 7.6, vlan=20, role=req)
    local_ipv4 = _imds_get(host4, meta + "local-ipv4", "192.168.30.41")
    b.tcp("imds-answers-only-v4-vlan30", "192.168.30.41", v4, 80, [local_ipv4], 8.2, vlan=30, role=req, seen="answers")
    b.syn_unanswered("imds-syn-unanswered-v4", "10.1.0.12", v4, 80, 8.5, role="request")
    # Clients above the endpoint's address: softflowd biflow (-b) reports them as flows from it.
    b.syn_unanswered("imds-syn-unanswered-v4-high-client", "192.168.20.12", v4, 80, 8.9, role="request")
    b.ping("ping-imds-v4", "192.168.10.13", v4, 2, 9.4, role=req)
    # Suppressed by subnet (10.99.0.0/16) or by VLAN (99).
    b.tcp("imds-v4-suppressed-subnet", "10.99.1.20", v4, 80, [index], 10.1, role=req)
    b.tcp("imds-v4-suppressed-subnet-vlan10", "10.99.2.20", v4, 80, [_imds_token(host4, token)], 10.6, vlan=10, role=req)
    b.tcp("imds-v4-suppressed-vlan99", "192.168.99.5", v4, 80, [_imds_token(host4, token)], 11.1, vlan=99, role=req)

    # IMDS over IPv6.
    index6, mac = _imds_get(host6, meta, _META_INDEX), _imds_get(host6, meta + "mac", "02:00:0a:01:00:0a")
    b.tcp("imdsv2-token-v6", "2001:db8:10::10", v6, 80, [_imds_token(host6, token)], 12.0, role=req)
    b.tcp("imdsv1-get-v6-vlan10", "2001:db8:10::31", v6, 80, [index6], 12.6, vlan=10, role=req)
    b.tcp("imdsv2-creds-v6-vlan30", "2001:db8:30::40", v6, 80, [_imds_get(host6, creds, _CREDENTIALS, token)], 13.2, vlan=30, role=req)
    b.tcp("imds-answers-only-v6", "2001:db8:20::77", v6, 80, [mac], 13.8, role=req, seen="answers")
    b.syn_unanswered("imds-syn-unanswered-v6-vlan20", "2001:db8:20::12", v6, 80, 14.2, vlan=20, role="request")
    b.ping("ping-imds-v6", "2001:db8:10::13", v6, 2, 15.0, role=req)
    b.tcp("imds-v6-suppressed-subnet", "2001:db8:99::20", v6, 80, [index6], 15.6, role=req)
    b.tcp("imds-v6-suppressed-vlan99", "2001:db8:10::99", v6, 80, [_imds_token(host6, token)], 16.2, vlan=99, role=req)

    # More ordinary traffic at the end.
    page = _imds_get("10.1.0.80", "/index.html", "<html>ok</html>")
    b.tcp("http-v4-vlan10", "192.168.10.30", "10.1.0.80", 80, [page], 16.8, vlan=10)
    b.udp("dns-v4-vlan99", "192.168.99.5", "10.1.0.2", 53, [_dns(rng, "example.net.", "192.0.2.9")], 17.3, vlan=99)
    b.tcp("https-v4-late", "10.1.0.12", "192.168.10.20", 443, [(hello, server_hello[:400])], 17.7)

    return Scenario(seed=seed, flows=tuple(b.flows))
