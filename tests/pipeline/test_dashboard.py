"""The shipped Grafana dashboard queries only metrics the collector exports, and is well-formed."""
from __future__ import annotations

import json
import re
from pathlib import Path

from imds_flow import config as config_mod
from imds_flow.app import Pipeline
from imds_flow.datagrams import DatagramBatch
from imds_flow.metrics import render_prometheus
from imds_flow.probe import build

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "imds-flow-dashboard.json"


class _Null:
    def write_alerts(self, alerts):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def exported_metrics() -> set[str]:
    pipeline = Pipeline(config_mod.load(None), _Null())
    pipeline.process(DatagramBatch.from_payloads([build("v9", now=1_760_000_000)], src=("192.0.2.1", 2055),
                                                 ts=1_760_000_000.0))
    text = render_prometheus(pipeline.snapshot())
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_every_queried_metric_is_exported():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    queried = {m for e in exprs for m in re.findall(r"\b(imds_flow_[a-z0-9_]+)", e)}
    exported = exported_metrics()
    assert "imds_flow_build_info" in exported
    assert queried and queried <= exported, sorted(queried - exported)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "imds-flow"


def test_build_info_is_one_series_with_versions():
    pipeline = Pipeline(config_mod.load(None), _Null())
    text = render_prometheus(pipeline.snapshot())
    [line] = [x for x in text.splitlines() if x.startswith("imds_flow_build_info{")]
    assert re.fullmatch(r'imds_flow_build_info\{version="[^"]+",python="3\.[^"]+",numpy="[^"]+",numba="[^"]+"\} 1',
                        line)
