"""listen.allowed_exporters: datagrams from other sources are dropped before decoding and counted.

The match is one numba pass over the batch (kernels.match_nets, the same 128-bit (hi, lo) form as
the endpoint tables); it is a filter, not authentication (see the comment in the shipped config).
"""
from __future__ import annotations

import ipaddress
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_flow import app, config, kernels
from imds_flow.addr import network_hilo, to_hilo
from imds_flow.config import ConfigError
from imds_flow.datagrams import DatagramBatch

T0 = 1_700_000_000.0
MINIMAL = '[[endpoints]]\nname = "imds"\naddress = "169.254.169.254"\n'
V5 = (5).to_bytes(2, "big") + (1).to_bytes(2, "big") + bytes(20) + bytes(4) + bytes([169, 254, 169, 254]) + bytes(40)


def pipeline(allowed) -> app.Pipeline:
    cfg = config.parse(MINIMAL + f"[listen]\nallowed_exporters = {allowed!r}\n".replace("'", '"'))
    return app.Pipeline(cfg, app._NullSink(), clock=lambda: T0, compact=False)


def test_default_is_every_source():
    assert config.load().listen.allowed_exporters == ()
    assert "allowed_exporters = []" in config.default_text()
    assert "NOT authentication" in config.default_text()


def test_config_values():
    cfg = config.parse(MINIMAL + '[listen]\nallowed_exporters = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]\n')
    assert cfg.listen.allowed_exporters == tuple(ipaddress.ip_network(n) for n in
                                                 ("192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32"))
    for value, message in (('["10.0.0.0/33"]', "listen.allowed_exporters[0] = '10.0.0.0/33': not an IPv4/IPv6"),
                           ('"10.0.0.0/8"', "listen.allowed_exporters = '10.0.0.0/8': expected list"),
                           ('[10]', "listen.allowed_exporters[0] = 10: expected an address or CIDR")):
        with pytest.raises(ConfigError) as e:
            config.parse(MINIMAL + f"[listen]\nallowed_exporters = {value}\n")
        assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_other_sources_are_dropped_before_decoding_and_counted(caplog):
    p = pipeline(["192.0.2.0/24", "2001:db8::/32"])
    srcs = [("192.0.2.10", 2055), ("198.51.100.1", 2055), ("2001:db8::1", 9995), ("2001:db9::1", 9995),
            ("192.0.3.1", 2055), ("192.0.2.255", 1)]
    with caplog.at_level(logging.WARNING, "imds_flow"):
        p.process(DatagramBatch.from_payloads([V5] * len(srcs), src=srcs, ts=T0))
    assert sorted(p.exporters.address) == ["192.0.2.10", "192.0.2.255", "2001:db8::1"]   # never registered
    assert p.exporters.dropped["not_allowed"] == 3
    assert p.exporters.total("datagrams") == 3 and p.batch.n == 3
    assert p.alerts_written == 3                                   # one per allowed exporter
    assert "not in listen.allowed_exporters" in caplog.text and "198.51.100.1" in caplog.text
    g = p.snapshot()["global"]
    assert g["not_allowed"] == 3


def test_a_batch_of_only_others_is_dropped_whole(caplog):
    p = pipeline(["10.0.0.0/8"])
    with caplog.at_level(logging.WARNING, "imds_flow"):
        for k in range(10):
            p.process(DatagramBatch.from_payloads([V5, b"junk"], src=("203.0.113.5", 7), ts=T0 + k * 0.01))
    assert p.exporters.dropped["not_allowed"] == 20 and len(p.exporters) == 0
    assert len([r for r in caplog.records if "allowed_exporters" in r.getMessage()]) == 1   # rate-limited


def test_truncated_marks_follow_the_kept_datagrams():
    p = pipeline(["192.0.2.1/32"])
    dg = DatagramBatch.from_payloads([V5, V5, V5], src=[("192.0.2.9", 1), ("192.0.2.1", 1), ("192.0.2.1", 1)], ts=T0)
    p.process(dg, truncated=np.array([False, True, False]))
    assert p.exporters.total("truncated_by_receive") == 1 and p.exporters.total("records") == 1


def _oracle(addr: str, nets: list[str]) -> bool:
    a = ipaddress.ip_address(addr)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return any(a.version == n.version and a in n for n in map(ipaddress.ip_network, nets))


_v4 = st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v)))
_v6 = st.integers(0, 2**128 - 1).map(lambda v: str(ipaddress.IPv6Address(v)))
_addr = st.one_of(_v4, _v6, st.sampled_from(["10.0.0.1", "10.255.255.255", "2001:db8::1", "::", "0.0.0.0"]))
_net = st.one_of(st.tuples(_v4, st.integers(0, 32)), st.tuples(_v6, st.integers(0, 128)),
                 st.sampled_from([("10.0.0.0", 8), ("2001:db8::", 32), ("0.0.0.0", 0), ("::", 0)]))


@settings(max_examples=150, deadline=None)
@given(st.lists(_addr, min_size=1, max_size=20), st.lists(_net, max_size=5))
def test_match_nets_against_ipaddress(addrs, nets):
    nets = [str(ipaddress.ip_network(f"{a}/{n}", strict=False)) for a, n in nets]
    rows = [network_hilo(n) for n in nets]
    table = tuple(np.array([r[i] for r in rows], np.uint64) for i in range(4)) + \
        (np.array([ipaddress.ip_network(n).version == 4 for n in nets], np.bool_),)
    hilo = [to_hilo(a) for a in addrs]
    out = np.empty(len(addrs), np.bool_)
    kernels.match_nets(np.array([h for h, _ in hilo], np.uint64), np.array([lo for _, lo in hilo], np.uint64),
                       *table, out)
    assert out.tolist() == [_oracle(a, nets) for a in addrs]
