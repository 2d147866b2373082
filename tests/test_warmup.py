"""warmup: after Pipeline.warm_up, the live path loads no kernel. A kernel first loaded by a live batch
costs tens of milliseconds (read from numba's cache, or compiled): at 3 M records/s a 4 MiB socket
buffer holds about 35 ms, so that first batch could cost exports."""
import numba

from bench.sflow import sflow_datagrams
from bench.synth import flow_datagrams
from imds_flow import config, receive
from imds_flow.app import Pipeline, _NullSink
from imds_flow.datagrams import DatagramBatch


def _overloads() -> dict[str, int]:
    """Signatures each of the package's numba dispatchers holds (compiled or loaded so far)."""
    import sys
    out = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("imds_flow"):
            for attr, value in vars(module).items():
                if isinstance(value, numba.core.dispatcher.Dispatcher):
                    out[f"{name}.{attr}"] = len(value.overloads)
    return out


def test_live_batches_load_no_kernel_after_the_warm_up():
    """In a fresh interpreter: in this one, earlier tests may have loaded kernels the warm-up forgot."""
    import subprocess
    import sys
    from pathlib import Path
    done = subprocess.run([sys.executable, "-c", "from tests.test_warmup import live_batches; live_batches()"],
                          cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def live_batches():
    cfg = config.parse('[[endpoints]]\nname = "imds"\naddress = "169.254.169.254"\n'
                       '[alerts]\nfold_window_seconds = 60\n')
    p = Pipeline(cfg, _NullSink(), clock=lambda: 1.7e9)
    p.warm_up()
    receive.warm_up()
    before = _overloads()
    for version in (5, 9, 10):
        ex = flow_datagrams(version, 32, 30, imds_fraction=0.05)
        ex.set_sequence(ex.data, 0)
        payloads = ([ex.template] if ex.template is not None else []) + [r.tobytes() for r in ex.data]
        for k in range(2):                           # the second time, hits fold into pending alerts
            p.process(DatagramBatch.from_payloads(payloads, src=("192.0.2.1", 2055), ts=1.7e9 + k))
        if ex.template is not None:                  # data alone, its template known: the one-call path
            p.process(DatagramBatch.from_payloads(payloads[1:], src=("192.0.2.1", 2055), ts=1.7e9 + 2))
    for k in range(2):
        p.process(DatagramBatch.from_payloads(sflow_datagrams(16, 8, 128, 0.3), src=("192.0.2.2", 6343),
                                              ts=1.7e9 + k))
    # the compiled polls (polls.py) on a real socket, as serve.py runs them: a new exporter's batch
    # goes back to Python, its next ones stay in the kernel
    import socket
    from imds_flow import polls
    from imds_flow.sockets import open_socket
    sock = open_socket("127.0.0.1", 0, 1 << 20)
    lc = config.load(None).listen
    r = receive.Receiver(sock, lc.batch_datagrams, lc.max_datagram_bytes, clock=p.clock)
    loop = polls.Polls(p, lc.coalesce_seconds, lc.batch_datagrams)
    v5 = flow_datagrams(5, 4, 30, imds_fraction=0.05)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for _ in range(3):
            for row in v5.data:
                tx.sendto(row.tobytes(), sock.getsockname())
            assert loop.run(r, 1)[0] == 4
    sock.close()
    # an exporter's data sets before its template (as after a restart of either end): they wait, and
    # are decoded when the template comes in a later batch
    ex = flow_datagrams(10, 4, 30, imds_fraction=0.05)
    ex.set_sequence(ex.data, 0)
    decoded = p.stats()["records"]
    p.process(DatagramBatch.from_payloads([r.tobytes() for r in ex.data], src=("192.0.2.3", 4739), ts=1.7e9))
    assert p.stats()["records"] == decoded
    p.process(DatagramBatch.from_payloads([ex.template], src=("192.0.2.3", 4739), ts=1.7e9 + 1))
    assert p.stats()["records"] == decoded + 4 * 30
    # a hundred exporters at once: the exporter and scope tables grow (KeyMap rehash)
    many = flow_datagrams(10, 100, 30)
    p.process(DatagramBatch.from_payloads([many.template] * 100, src=[(f"192.0.2.{i}", 4739) for i in range(100)],
                                          ts=1.7e9 + 2))
    p.tick(1.7e9 + 100)
    p.close()
    assert p.stats()["alerts"] > 0
    after = _overloads()
    assert {k: v for k, v in after.items() if v != before.get(k)} == {}
