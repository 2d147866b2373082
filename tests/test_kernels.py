"""The detection kernel against the ipaddress oracle on hypothesis-generated records."""
import ipaddress

import numba
import numpy as np
from hypothesis import given, settings, strategies as st

from imds_flow.addr import network_hilo, to_hilo, from_hilo
from imds_flow.config import parse
from imds_flow.detect import DIRECTIONS, Detector
from imds_flow.flows import NAT_DST, NAT_SRC, FlowBatch
from imds_flow.kernels import cover, in_cover, match_net, vlan_code, vlan_codes

from tests.support.oracle import detect_one

ENDPOINT_POOL = ["169.254.169.254", "fd00:ec2::254", "169.254.170.0/24", "100.100.100.200", "fd00:c1::/32"]
SUBNET_POOL = ["10.0.0.0/8", "10.99.0.0/16", "2001:db8:99::/48", "192.168.1.0/24", "::/0", "0.0.0.0/0",
               "169.254.0.0/16", "fd00::/8"]


def near(pool):
    """Addresses that sit in, at the edge of, or just outside the pool's networks."""
    out = []
    for text in pool:
        net = ipaddress.ip_network(text, strict=False)
        first, last = int(net.network_address), int(net.broadcast_address)
        top = (1 << net.max_prefixlen) - 1
        for v in (first, last, max(first - 1, 0), min(last + 1, top), (first + last) // 2):
            out.append(str(ipaddress.ip_address(v) if net.version == 4 else ipaddress.IPv6Address(v)))
    return out


addr = st.one_of(
    st.sampled_from(near(ENDPOINT_POOL) + near(SUBNET_POOL)),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
vlan = st.one_of(st.just(-1), st.integers(0, 4095), st.sampled_from([10, 99, 0, 4095, 5000]))
more_vlan = st.one_of(st.integers(0, 4095), st.sampled_from([10, 99, 0, 4095]))   # a 3rd .. 7th tag's id
record = st.fixed_dictionaries({
    "src": addr, "dst": addr,
    "nsrc": st.one_of(st.none(), addr), "ndst": st.one_of(st.none(), addr),
    # the four VLAN columns, then the ids vlan_more holds (most records: none)
    "vlans": st.tuples(st.lists(vlan, min_size=4, max_size=4),
                       st.one_of(st.just([]), st.lists(more_vlan, max_size=5))).map(lambda t: t[0] + t[1]),
    "url": st.sampled_from([-1, -1, -1, 0, 1]),
})
config = st.fixed_dictionaries({
    "endpoints": st.lists(st.sampled_from(ENDPOINT_POOL), min_size=1, max_size=4, unique=True),
    "subnets": st.lists(st.sampled_from(SUBNET_POOL), max_size=3, unique=True),
    "vlans": st.lists(st.sampled_from([0, 10, 99, 4095]), max_size=3, unique=True),
})


def build_config(cfg):
    eps = "\n".join(f'[[endpoints]]\nname = "e{i}"\naddress = "{a}"' for i, a in enumerate(cfg["endpoints"]))
    subnets = ", ".join(f'"{s}"' for s in cfg["subnets"])
    return parse(f"{eps}\n[suppress]\nsource_subnets = [{subnets}]\nvlans = {cfg['vlans']}\n")


def pack_more(ids) -> int:
    """vlan_more as flows.py lays it out: 12 bits an id from bit 0, their number from bit 60."""
    return sum(v << 12 * k for k, v in enumerate(ids)) | len(ids) << 60 if ids else 0


def fill(records):
    fb = FlowBatch(max(1, len(records)))
    fb.reset(len(records))
    c = fb.cols
    for i, r in enumerate(records):
        c.src_hi[i], c.src_lo[i] = to_hilo(r["src"])
        c.dst_hi[i], c.dst_lo[i] = to_hilo(r["dst"])
        flags = 0
        c.nsrc_hi[i] = c.nsrc_lo[i] = c.ndst_hi[i] = c.ndst_lo[i] = 0
        if r["nsrc"] is not None:
            c.nsrc_hi[i], c.nsrc_lo[i] = to_hilo(r["nsrc"])
            flags |= NAT_SRC
        if r["ndst"] is not None:
            c.ndst_hi[i], c.ndst_lo[i] = to_hilo(r["ndst"])
            flags |= NAT_DST
        c.row_flags[i] = flags
        c.vlan_src[i], c.vlan_dst[i], c.vlan_dot1q[i], c.vlan_cust[i] = r["vlans"][:4]
        c.vlan_more[i] = pack_more(r["vlans"][4:])
        c.url[i] = r["url"]
        c.exporter[i] = i % 3
    fb.n = len(records)
    return fb


@settings(max_examples=300, deadline=None)
@given(cfg=config, records=st.lists(record, max_size=40))
def test_detect_matches_oracle(cfg, records):
    conf = build_config(cfg)
    det = Detector(conf, url_patterns=("/latest/meta-data", "/latest/api/token"))
    by_exporter = np.zeros((3, 2), np.int64)[:, 0]
    hits = det.run(fill(records), by_exporter)
    got = {int(i): (int(e), DIRECTIONS[d]) for i, e, d in zip(hits.idx, hits.endpoint, hits.direction)}
    nets = [e.network for e in conf.endpoints]
    want = {}
    suppressed = [0, 0, 0]
    for i, r in enumerate(records):
        res = detect_one(r, nets, list(conf.suppress.source_subnets), set(conf.suppress.vlans))
        if res is not None:
            want[i] = res
        elif detect_one(r, nets, [], set()) is not None:
            suppressed[i % 3] += 1
    assert got == want
    assert hits.suppressed == sum(suppressed)
    assert by_exporter.tolist() == suppressed


@settings(max_examples=300, deadline=None)
@given(a=addr, net=st.sampled_from(ENDPOINT_POOL + SUBNET_POOL))
def test_match_net_matches_ipaddress(a, net):
    n = ipaddress.ip_network(net)
    table = [np.array([v], np.uint64) for v in network_hilo(net)] + [np.array([n.version == 4])]
    hi, lo = to_hilo(a)
    ip = ipaddress.ip_address(a)
    ip = ip.ipv4_mapped or ip if ip.version == 6 else ip
    assert (match_net(np.uint64(hi), np.uint64(lo), *table) == 0) == (ip.version == n.version and ip in n)


@numba.njit
def _in_cover_of(hi, lo, net_hi, net_lo, mask_hi, mask_lo, net_v4):
    return in_cover(hi, lo, cover(net_hi, net_lo, mask_hi, mask_lo, net_v4))


@settings(max_examples=300, deadline=None)
@given(addrs=st.lists(addr, min_size=1, max_size=8),
       nets=st.lists(st.sampled_from(ENDPOINT_POOL + SUBNET_POOL + ["169.254.169.123", "fd00:ec2::23"]),
                     max_size=5, unique=True))
def test_cover_holds_every_address_of_its_networks(addrs, nets):
    """kernels.cover / in_cover, the quick rejection before match_net: an address in a network of the
    table is in the cover (ipaddress decides); one network alone is its own cover."""
    networks = [ipaddress.ip_network(n) for n in nets]
    cols = list(zip(*(network_hilo(n) for n in nets))) or [(), (), (), ()]
    table = [np.array(c, np.uint64) for c in cols] + [np.array([n.version == 4 for n in networks], np.bool_)]
    for a in addrs:
        hi, lo = to_hilo(a)
        ip = ipaddress.ip_address(a)
        ip = ip.ipv4_mapped or ip if ip.version == 6 else ip
        inside = any(ip.version == n.version and ip in n for n in networks)
        got = _in_cover_of(np.uint64(hi), np.uint64(lo), *table)
        assert got or not inside
        if len(networks) == 1:
            assert got == inside or (got and ip.version != networks[0].version)


@given(a=addr)
def test_hilo_roundtrip(a):
    ip = ipaddress.ip_address(a)
    want = ip.ipv4_mapped or ip if ip.version == 6 else ip   # IPv4-mapped renders as IPv4
    assert from_hilo(*to_hilo(a)) == str(want)


@settings(max_examples=200, deadline=None)
@given(vlans=st.lists(st.tuples(*[st.sampled_from([-1, 0, 1, 30, 4095])] * 4), min_size=1, max_size=20),
       more=st.lists(st.lists(st.sampled_from([0, 7, 4095]), max_size=5), min_size=20, max_size=20))
def test_vlan_code_is_the_alert_vlan(vlans, more):
    """kernels.vlan_code / vlan_codes (alerts and folding) against the rule in plain Python: the
    first VLAN id above 0 of vlan_src, vlan_dst, vlan_dot1q, vlan_cust and the ids in vlan_more,
    else 0 if one is 0, else -1."""
    from imds_flow.flows import VLAN_COLUMNS, FlowBatch
    fb = FlowBatch(len(vlans))
    for name, column in zip(VLAN_COLUMNS, zip(*vlans)):
        getattr(fb.cols, name)[: len(vlans)] = column
    fb.cols.vlan_more[: len(vlans)] = [pack_more(m) for m in more[: len(vlans)]]
    rows = [list(row) + m for row, m in zip(vlans, more)]
    want = [next((v for v in row if v > 0), 0 if 0 in row else -1) for row in rows]
    out = np.empty(len(vlans), np.int64)
    vlan_codes(fb.rows, np.arange(len(vlans), dtype=np.int64), out)
    assert [vlan_code(fb.rows, i) for i in range(len(vlans))] == out.tolist() == want


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 30), picks=st.lists(st.integers(0, 29), max_size=12))
def test_hit_fields_are_the_columns(seed, n, picks):
    """kernels.hit_fields (alerts.hit_alerts' one gather) against reading the columns one at a time:
    every field of HIT_INTS / HIT_FLOATS of the picked rows, signed fields as their unsigned 64-bit
    pattern, VLAN as vlan_code + 1; rows filled with random bytes, NaN times included."""
    from imds_flow.flows import ROW
    from imds_flow.kernels import HIT_FLOATS, HIT_INTS, hit_fields
    rng = np.random.default_rng(seed)
    fb = FlowBatch(n)
    fb.rows[:n] = np.frombuffer(rng.bytes(n * ROW.itemsize), ROW)
    fb.cols.first_seen[rng.random(n) < 0.3] = np.nan
    idx = np.array([p % n for p in picks], np.int64)
    ints, floats = np.empty((len(idx), len(HIT_INTS)), np.uint64), np.empty((len(idx), len(HIT_FLOATS)))
    hit_fields(fb.rows, idx, ints, floats)
    for k, i in enumerate(idx.tolist()):
        want = [int(getattr(fb.cols, name)[i]) % 2**64 for name in HIT_INTS[:-1]] + [vlan_code(fb.rows, i) + 1]
        assert ints[k].tolist() == want
        got, want_f = floats[k].tolist(), [float(getattr(fb.cols, name)[i]) for name in HIT_FLOATS]
        assert [g == w or (g != g and w != w) for g, w in zip(got, want_f)] == [True] * 3


_U64 = st.one_of(st.integers(0, 2 ** 64 - 1), st.sampled_from([0, 1, 2 ** 32, 2 ** 63, 2 ** 64 - 1]))


@settings(max_examples=400, deadline=None)
@given(_U64, _U64)
def test_saturating_add_and_multiply_are_plain_arithmetic_capped_at_64_bits(a, b):
    """kernels.sat_add / sat_mul (an alert's sums and estimates) against Python's ints, and
    alerts.saturate, the same rule on the Python side."""
    from imds_flow.alerts import saturate
    from imds_flow.kernels import sat_add, sat_mul
    top = 2 ** 64 - 1
    assert int(sat_add(np.uint64(a), np.uint64(b))) == min(a + b, top) == saturate(a + b)
    assert int(sat_mul(np.uint64(a), np.uint64(b))) == min(a * b, top) == saturate(a * b)
