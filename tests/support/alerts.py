"""Alert maps for the tests of formats and sinks: `alert`, one with every field the collector fills;
`short_alert`, a small one numbered by its field n (packed: as msgpack; unpack_file reads them back);
AlertList, a sink that keeps the msgpack alerts it is given, decoded."""
from __future__ import annotations

import msgpack

__all__ = ["TS0", "alert", "short_alert", "packed", "unpack_file", "AlertList"]

TS0 = 1_760_000_000.25


def alert(n: int, **kw) -> dict:
    a = {"ts": TS0 + n, "exporter": "192.0.2.1", "exporter_port": 2055, "version": 9, "src": "10.1.2.3",
         "dst": "169.254.169.254", "sport": 1000 + n, "dport": 80, "proto": 6, "vlan": 30,
         "endpoint": "aws-imds-ipv4", "direction": "request", "bytes": 400, "packets": 5,
         "first_seen": TS0 + n - 1, "last_seen": TS0 + n, "count": 1, "sampling_rate": 1}
    a.update(kw)
    return a


def short_alert(n: int, pad: int = 0) -> dict:
    return {"n": n, "ts": 1_760_000_000.0 + n, "src": "10.0.0.1", "dst": "169.254.169.254", "sport": 40000,
            "dport": 80, "proto": 6, "endpoint": "aws-imds-ipv4", "direction": "request", "count": 1,
            "pad": "x" * pad}


def packed(n: int, pad: int = 0) -> bytes:
    return msgpack.packb(short_alert(n, pad))


def unpack_file(path) -> list[dict]:
    with open(path, "rb") as f:
        return list(msgpack.Unpacker(f, raw=False))


class AlertList:
    def __init__(self):
        self.alerts = []

    def write_alerts(self, alerts):
        self.alerts += [msgpack.unpackb(a) for a in alerts]

    def flush(self):
        pass

    def close(self):
        pass
