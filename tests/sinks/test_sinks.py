"""Local sinks and the sink configuration: UDP datagrams, several sinks with different formats at once,
[[sinks]] validation (file rotation: test_stream.py)."""
import json
import re
import socket

import msgpack
import pytest

from imds_flow import config as config_mod
from imds_flow.config import ConfigError, SinkSpec
from imds_flow.formats import EcsJsonEncoder
from imds_flow.sinks import UdpSink, open_sinks, spool_dir_for
from tests.conftest import ROOT
from tests.support.alerts import packed, short_alert, unpack_file


@pytest.mark.parametrize("fmt", ["msgpack", "ecs-json"])
def test_udp_sends_one_datagram_per_alert(fmt):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    sinks = open_sinks([SinkSpec("udp", name="udp", format=fmt, address=f"127.0.0.1:{port}", host="127.0.0.1",
                                 port=port)])
    enc = msgpack.packb if fmt == "msgpack" else EcsJsonEncoder().encode
    for start in range(0, 300, 30):
        sinks.write_alerts([enc(short_alert(n)) for n in range(start, start + 30)])
    got = []
    for _ in range(300):
        d = rx.recv(65536)
        got.append(msgpack.unpackb(d)["n"] if fmt == "msgpack" else json.loads(d)["source"]["port"])
    assert got == (list(range(300)) if fmt == "msgpack" else [40000] * 300)
    assert sinks.stats()["sinks"][0]["sent"] == 300
    sinks.close()
    rx.close()


def test_udp_to_a_closed_port_counts_drops_and_never_raises():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    sink = UdpSink("udp closed", "127.0.0.1", port)
    for n in range(20):
        sink.write_alerts([packed(n)])
    assert sink.sent + sink.dropped == 20 and sink.dropped > 0     # ICMP port unreachable -> ECONNREFUSED
    sink.close()


def test_several_sinks_with_their_own_formats(tmp_path):
    specs = [SinkSpec("file", name="mp", path=str(tmp_path / "a.mp")),
             SinkSpec("file", name="ecs", format="ecs-json", path=str(tmp_path / "a.json"))]
    sinks = open_sinks(specs)
    assert sinks.input_format == "msgpack"             # mixed formats: msgpack in, ECS made per sink
    sinks.write_alerts([packed(n) for n in range(5)])
    sinks.flush()
    sinks.close()
    assert [a["n"] for a in unpack_file(tmp_path / "a.mp")] == list(range(5))
    docs = [json.loads(x) for x in (tmp_path / "a.json").read_text().splitlines()]
    assert len(docs) == 5 and docs[0]["rule"]["name"] == "aws-imds-ipv4"
    stats = sinks.stats()
    assert [s["sent"] for s in stats["sinks"]] == [5, 5] and stats["spool_bytes"] == 0


def test_one_format_everywhere_is_passed_through(tmp_path):
    sinks = open_sinks([SinkSpec("file", name="ecs", format="ecs-json", path=str(tmp_path / "a.json"))],
                       alerts=str(tmp_path / "b.json"), alerts_format="ecs-json")
    assert sinks.input_format == "ecs-json" and [s.name for s in sinks.sinks] == ["ecs", str(tmp_path / "b.json")]
    sinks.close()


def test_alerts_option_alone_and_the_stdout_default(tmp_path):
    assert [s.name for s in open_sinks([]).sinks] == ["stdout"]
    sinks = open_sinks([], alerts=str(tmp_path / "x.mp"))
    assert [s.kind for s in sinks.sinks] == ["file"]
    sinks.close()


def test_spool_dir_auto_is_under_the_state_directory(tmp_path):
    spec = SinkSpec("fluent", address="[::1]:24224", host="::1", port=24224)
    assert spool_dir_for(spec, tmp_path) == tmp_path / "spool" / "fluent-__1-24224"


# --- configuration -------------------------------------------------------------------------------

BASE = config_mod.default_text()


def parse_sinks(text: str):
    return config_mod.parse(BASE + "\n" + text).sinks


def test_sinks_parse():
    sinks = parse_sinks('''
[[sinks]]
type = "fluent"
address = "logs.example.net:24224"
tag = "security.imds"
spool_max_bytes = 1048576
[[sinks]]
type = "file"
path = "/var/log/imds-flow/alerts.json"
format = "ecs-json"
max_bytes = 104857600
keep = 3
[[sinks]]
type = "udp"
address = "[2001:db8::1]:5140"
''')
    assert [s.type for s in sinks] == ["fluent", "file", "udp"]
    assert (sinks[0].host, sinks[0].port, sinks[0].tag, sinks[0].require_ack) == \
        ("logs.example.net", 24224, "security.imds", True)
    assert (sinks[1].format, sinks[1].max_bytes, sinks[1].keep) == ("ecs-json", 104857600, 3)
    assert (sinks[2].host, sinks[2].port, sinks[2].name) == ("2001:db8::1", 5140, "udp [2001:db8::1]:5140")
    assert config_mod.parse(BASE).sinks == ()


@pytest.mark.parametrize("table, message", [
    ('type = "kafka"', "sinks[0].type = 'kafka': expected one of stdout, file, udp, tcp, fluent"),
    ('type = "tcp"', "sinks[0].address: missing for a tcp sink"),
    ('type = "file"', "sinks[0].path: missing for a file sink"),
    ('type = "tcp"\naddress = "localhost"', "sinks[0].address = 'localhost': expected host:port"),
    ('type = "tcp"\naddress = "h:70000"', "sinks[0].address = 'h:70000'"),
    ('type = "udp"\naddress = "h:1"\nspool_dir = "/x"', "unknown key sinks[0].spool_dir = '/x'"),
    ('type = "file"\npath = "p"\ntag = "t"', "unknown key sinks[0].tag = 't'"),
    ('type = "file"\npath = "p"\nformat = "xml"', "sinks[0].format = 'xml': expected one of msgpack, ecs-json"),
    ('type = "file"\npath = "p"\nmax_bytes = -1', "sinks[0].max_bytes = -1: must be >= 0"),
    ('type = "fluent"\naddress = "h:1"\nrequire_ack = "yes"', "sinks[0].require_ack = 'yes': expected bool"),
    ('type = "tcp"\naddress = "h:1"\nspool_max_bytes = 10', "sinks[0].spool_max_bytes = 10: must be >= 4096"),
])
def test_bad_sinks_are_one_line_errors(table, message):
    with pytest.raises(ConfigError) as e:
        parse_sinks("[[sinks]]\n" + table)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_two_sinks_cannot_share_a_name_or_a_spool():
    with pytest.raises(ConfigError, match="two sinks have this name"):
        parse_sinks('[[sinks]]\ntype = "stdout"\n[[sinks]]\ntype = "stdout"\n')
    with pytest.raises(ConfigError, match="already the spool of another sink"):
        parse_sinks('[[sinks]]\ntype = "tcp"\naddress = "a:1"\nspool_dir = "/s"\n'
                    '[[sinks]]\ntype = "fluent"\naddress = "a:2"\nspool_dir = "/s"\n')


def test_the_commented_examples_in_the_shipped_config_parse():
    text = (ROOT / "config/imds-flow.toml").read_text()
    block = text[text.index("# --- Alert sinks"):]
    block = block[:block.index("\n# ---", 10)] if "\n# ---" in block[10:] else block
    uncommented = "\n".join(re.sub(r"^#\s*", "", line) for line in block.splitlines()
                            if line.startswith("# [[sinks]]") or re.match(r"^#\s+[a-z_]+ = ", line))
    sinks = config_mod.parse(BASE + "\n" + uncommented).sinks
    assert {s.type for s in sinks} == {"stdout", "file", "udp", "tcp", "fluent", "syslog", "nats"}

