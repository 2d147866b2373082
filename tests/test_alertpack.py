"""alertpack.Packer against its oracle: the msgpack Encoder makes of hit_alerts' dict for the same
hit (with the probe's "test": true where Pipeline._emit adds it), byte for byte, for rows of
random bytes: every field, addresses of every shape (runs of zero hextets, IPv4-mapped), NaN
times, HTTP strings with non-ASCII bytes, counters of every msgpack int width and past 64 bits."""
import numpy as np
from hypothesis import given, settings, strategies as st

from imds_flow.alertpack import Packer
from imds_flow.alerts import Encoder, hit_alerts
from imds_flow.detect import Hits
from imds_flow.flows import HTTP, ROW, FlowBatch
from imds_flow.probe import PROBE_PORT, PROBE_SOURCE, PROBE_SOURCE_V6, is_probe
from imds_flow.addr import to_hilo


class _Exporters:
    address = ["192.0.2.1", "2001:db8::7", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
    port = [2055, 65535, 40000]


NAMES = ("aws-imds-ipv4", "aws-imds-ipv6", "url")
SIGNALS = ("address", "address", "url")
SPECIAL = ("::", "::1", "1::", "2001:db8::1", "fe80::1:0:0:1", "1:0:0:1:0:0:0:1", "1:0:0:2:0:0:3:4", "1:2:3:4:5:6:7:0",
           "0:1:2:3:4:5:6:7", "fd00:ec2::254", "0.0.0.0", "255.255.255.255", "169.254.169.254", "::ffff:0:102:304",
           "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::2:3:4:5:6:7:8", "1:2:3:4:5:6::")
MANY_HEADERS = tuple(f"x-header-{k}" for k in range(20))        # 16 or more present: a msgpack array16
HEADERS = ("x-aws-ec2-metadata-token", "x-aws-ec2-metadata-token-ttl-seconds", "metadata-flavor")


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), buf=st.binary(min_size=0, max_size=400),
       probe=st.floats(0, 1), small=st.booleans(), headers=st.sampled_from([HEADERS, MANY_HEADERS]),
       room=st.integers(0, 6000))
def test_packed_alerts_are_the_encoded_dicts(seed, n, buf, probe, small, headers, room):
    """`room`: the bytes the packer's buffer holds at first (one pass writes while room is left and
    only measures the rest; then again into twice what it lacked): the same bytes either way, and
    not one written past that buffer's end (the kernel stores a word at a time: alertpack._WORD)."""
    rng = np.random.default_rng(seed)
    fb = FlowBatch(n)
    fb.reset(n)
    fb.rows[:n] = np.frombuffer(rng.bytes(n * ROW.itemsize), ROW)
    fb.n = n
    c = fb.cols
    c.exporter[:n] = rng.integers(0, 3, n)
    if small:                                   # counters and sampling of every msgpack int width
        for col in (c.bytes, c.packets, c.sampling_rate, c.in_if, c.out_if, c.sport, c.dport):
            col[:n] = rng.choice([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32], n)
    for hi, lo in ((c.src_hi, c.src_lo), (c.dst_hi, c.dst_lo)):   # runs of zero hextets, IPv4-mapped
        for i in range(n):
            kind = rng.integers(0, 4)
            if kind == 0:
                hi[i], lo[i] = to_hilo(SPECIAL[rng.integers(0, len(SPECIAL))])
            elif kind == 1:
                words = [int(rng.integers(0, 65536)) if rng.integers(0, 3) else 0 for _ in range(8)]
                v = sum(w << (16 * (7 - q)) for q, w in enumerate(words))
                hi[i], lo[i] = v >> 64, v & (2**64 - 1)
            elif kind == 2:
                hi[i], lo[i] = 0, 0xFFFF_0000_0000 | int(rng.integers(0, 2**32))
    c.first_seen[rng.random(n) < 0.3] = np.nan
    c.last_seen[rng.random(n) < 0.3] = np.nan
    c.http_method[:n] = rng.integers(0, 9, n)   # METHODS
    fb.buf = np.frombuffer(buf, np.uint8).copy() if buf else np.zeros(1, np.uint8)
    fb.late_buf = np.frombuffer(buf[::-1], np.uint8).copy() if buf else np.zeros(1, np.uint8)
    size = len(fb.buf)
    for col_off, col_len in ((c.url_off, c.url_len), (c.host_off, c.host_len)):
        col_off[:n] = rng.integers(0, size, n)
        col_len[:n] = [rng.integers(0, size - o + 1) for o in col_off[:n]]
    for i in np.flatnonzero(rng.random(n) < probe):
        src = (PROBE_SOURCE, PROBE_SOURCE_V6)[i % 2]
        if i % 3:
            (c.src_hi[i], c.src_lo[i]), c.sport[i] = to_hilo(src), PROBE_PORT
        else:
            (c.dst_hi[i], c.dst_lo[i]), c.dport[i] = to_hilo(src), PROBE_PORT
    idx = rng.integers(0, n, rng.integers(1, 2 * n + 1))
    ep = rng.integers(0, len(NAMES), len(idx)).astype(np.int32)
    direction = rng.integers(0, 2, len(idx)).astype(np.uint8)
    hits = Hits(idx, ep, direction, 0, SIGNALS[: rng.integers(0, 4)], headers)
    packer = Packer((PROBE_SOURCE, PROBE_SOURCE_V6), PROBE_PORT)
    guarded = np.full(room + 64, 0xAB, np.uint8)
    packer._all_out = guarded[:room]
    packed, ts = packer.pack(fb, hits, NAMES, _Exporters)
    assert (guarded[room:] == 0xAB).all()
    enc = Encoder()
    for k, (_, alert) in enumerate(hit_alerts(fb, hits, NAMES, _Exporters)):
        if is_probe(alert):
            alert["test"] = True
        assert ts[k] == alert["ts"] or ts[k] != ts[k]
        if packed[k] is None:                   # only where the dict path's ints pass 64 bits
            assert alert["bytes_estimate"] >= 2**64 or alert["packets_estimate"] >= 2**64
            continue
        assert packed[k] == enc.encode(alert), alert


def test_exporter_rows_added_between_batches_and_another_table():
    """The packed exporter addresses follow the table as it grows, and a second table (warm-up's
    scratch one, then the pipeline's) starts afresh."""
    class Table:
        def __init__(self, addresses):
            self.address, self.port = list(addresses), [2055 + k for k in range(len(addresses))]
    fb = FlowBatch(4)
    fb.reset(4)
    c = fb.cols
    c.version[:4], c.row_flags[:4], c.sampling_rate[:4], c.vlan_src[:4], c.vlan_dst[:4] = 5, 0, 1, -1, -1
    c.vlan_dot1q[:4], c.vlan_cust[:4], c.vlan_more[:4] = -1, -1, 0
    (c.dst_hi[:4], c.dst_lo[:4]), (c.src_hi[:4], c.src_lo[:4]) = to_hilo("169.254.169.254"), to_hilo("10.0.0.1")
    c.exporter[:4] = [0, 1, 2, 1]
    fb.n = 4
    packer, enc = Packer(), Encoder()
    first, second = Table(["192.0.2.9"]), Table(["10.9.9.9", "2001:db8::1"])
    for table, rows, grows in ((first, [0], False), (second, [0, 1], False), (second, [0, 1, 2, 3], True)):
        if grows:
            table.address.append("198.51.100.7")
            table.port.append(9995)
        hits = Hits(np.array(rows, np.int64), np.zeros(len(rows), np.int32), np.zeros(len(rows), np.uint8), 0, ("address",))
        packed, _ = packer.pack(fb, hits, ("imds",), table)
        assert packed == [enc.encode(alert) for _, alert in hit_alerts(fb, hits, ("imds",), table)]


U64 = st.integers(0, 2**64 - 1)
FOLDED = st.tuples(st.integers(1, 2**40), U64, U64, U64, U64,                 # count, bytes, packets, estimates
                   st.one_of(st.just(float("nan")), st.floats(0, 2e9)),    # first, last seen
                   st.one_of(st.just(float("nan")), st.floats(0, 2e9)), st.floats(0, 2e9),   # ts
                   st.integers(0, 65535), st.integers(0, 65535), st.integers(-1, 4095))      # sport, dport, VLAN code


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), folded=st.lists(FOLDED, min_size=1, max_size=20), probe=st.floats(0, 1))
def test_folded_alerts_are_the_encoded_dicts(seed, folded, probe):
    """Packer.pack_folded (a pending alert the fold kernel made, leaving with its folded numbers)
    against its oracle: the dict Folder._release makes (hit_alerts' of its first record, the folded
    numbers over it, "test" where the final dict is a probe's), encoded. Rows of random bytes
    without HTTP columns (the kernel holds none); the latest record's ports sometimes the probe's."""
    rng = np.random.default_rng(seed)
    m = len(folded)
    held = np.frombuffer(rng.bytes(m * ROW.itemsize), ROW).copy()
    fb = FlowBatch(m)
    fb.reset(m)
    fb.rows[:m] = held
    c = fb.cols
    c.exporter[:m] = rng.integers(0, 3, m)
    c.row_flags[:m] &= ~np.uint8(HTTP) & 0xFF
    c.http_method[:m] = 0
    for i in np.flatnonzero(rng.random(m) < probe):
        (c.src_hi[i], c.src_lo[i]) = to_hilo((PROBE_SOURCE, PROBE_SOURCE_V6)[i % 2])
    held = fb.rows[:m].copy()
    rows = rng.permutation(m)                           # pending rows in any order
    ep = rng.integers(0, len(NAMES), m)
    direction = rng.integers(0, 2, m)
    f = np.array([list(x) for x in folded], dtype=object)
    probe_port = rng.random(m) < probe
    sport = np.where(probe_port, PROBE_PORT, f[:, 8]).astype(np.int64)
    count = f[:, 0].astype(np.int64)
    sums = np.array(f[:, 1:5].tolist(), np.uint64)
    times = np.array(f[:, [5, 6, 7]].tolist(), np.float64)
    tail = np.stack([sport, f[:, 9].astype(np.int64), f[:, 10].astype(np.int64)], axis=1)
    run = Packer((PROBE_SOURCE, PROBE_SOURCE_V6), PROBE_PORT).pack_folded(
        held, rows, ep, direction, count, sums, times, tail, NAMES, SIGNALS, HEADERS, _Exporters)
    assert len(run.out) == run.ends[-1] and run.ok.all()
    packed, ts = run.split()
    hits = Hits(rows.astype(np.int64), ep.astype(np.int32), direction.astype(np.uint8), 0, SIGNALS, HEADERS)
    enc = Encoder()
    for k, (_, alert) in enumerate(hit_alerts(fb, hits, NAMES, _Exporters)):
        b, p, be, pe = sums[k].tolist()
        first, last, t = times[k].tolist()
        s, d, vlan = tail[k].tolist()
        alert.update(count=int(count[k]), bytes=b, packets=p, first_seen=None if first != first else first,
                     last_seen=None if last != last else last, ts=t, sport=s, dport=d,
                     vlan=None if vlan < 0 else vlan, bytes_estimate=be, packets_estimate=pe)
        if is_probe(alert):
            alert["test"] = True
        assert ts[k] == t
        assert packed[k] == enc.encode(alert), alert
