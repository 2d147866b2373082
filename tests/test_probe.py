"""probe: every export decodes (our decoder) to the one probe record, IPv4 and IPv6 endpoints; v5
refuses IPv6; is_probe recognises the record's alert either way round; send() puts the datagram on
a real UDP socket."""
import socket

import pytest

from imds_flow import probe
from imds_flow.addr import from_hilo
from imds_flow.wire import decode_one


@pytest.mark.parametrize("export,endpoint", [
    ("v5", "169.254.169.254"), ("v9", "169.254.169.254"), ("ipfix", "169.254.169.254"), ("sflow", "169.254.169.254"),
    ("v9", "fd00:ec2::254"), ("ipfix", "fd00:ec2::254"), ("sflow", "fd00:ec2::254")])
def test_every_export_carries_one_probe_record(export, endpoint):
    out = decode_one(probe.build(export, endpoint, now=1_700_000_000.0))
    c = out.cols
    source = probe.PROBE_SOURCE_V6 if ":" in endpoint else probe.PROBE_SOURCE
    assert out.n == 1
    assert (from_hilo(c.src_hi[0], c.src_lo[0]), int(c.sport[0])) == (source, probe.PROBE_PORT)
    assert (from_hilo(c.dst_hi[0], c.dst_lo[0]), int(c.dport[0]), int(c.proto[0])) == (endpoint, 80, 6)


def test_sflow_agent_and_v5_limits():
    assert probe.build("sflow", agent="192.0.2.1")[4:12] == bytes([0, 0, 0, 1, 192, 0, 2, 1])
    with pytest.raises(ValueError, match="IPv4 only"):
        probe.build("v5", "fd00:ec2::254")
    with pytest.raises(ValueError, match="unknown export"):
        probe.build("v10")


def test_is_probe_either_direction():
    request = {"src": probe.PROBE_SOURCE, "sport": probe.PROBE_PORT, "dst": "169.254.169.254", "dport": 80}
    answer = {"src": "169.254.169.254", "sport": 80, "dst": probe.PROBE_SOURCE_V6, "dport": probe.PROBE_PORT}
    assert probe.is_probe(request) and probe.is_probe(answer)
    assert not probe.is_probe({**request, "sport": probe.PROBE_PORT + 1})
    assert not probe.is_probe({**request, "src": "192.0.2.170"})
    assert not probe.is_probe({**answer, "dport": 80}) and not probe.is_probe({**answer, "dst": "192.0.2.170"})


def test_send_puts_the_datagram_on_the_wire():
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx:
        rx.bind(("::1", 0))
        rx.settimeout(10)
        data, addr = probe.send("::1", rx.getsockname()[1], "sflow", "fd00:ec2::254")
        got, _ = rx.recvfrom(65535)
    assert got == data and addr[0] == "::1"
    assert data == probe.build("sflow", "fd00:ec2::254", agent="0.0.0.0")   # an IPv6 socket: no IPv4 agent
