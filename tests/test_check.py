"""check: the effective configuration as TOML parses back to the same configuration (every section,
every sink, the shared key hidden), each sink shows only its type's keys; problems() names the sink
whose TLS files do not load."""
import tomllib

from imds_flow import config as config_mod
from imds_flow.check import effective_toml, problems
from imds_flow.config import SINK_KEYS

SINKS = '''
[[endpoints]]
name = "gcp"
address = "fd20:ce::254"
[suppress]
vlans = [666]
[[sinks]]
type = "udp"
address = "[::1]:5140"
[[sinks]]
type = "fluent"
address = "127.0.0.1:24224"
shared_key = "s3cr3t"
'''


def test_effective_toml_parses_back_to_the_same_config():
    for cfg in (config_mod.load(None), config_mod.parse(SINKS, "with sinks")):
        text = effective_toml(cfg)
        assert text.startswith(f"# effective configuration of {cfg.source}")
        again = config_mod.parse(text.replace('"(set; not shown)"', '"s3cr3t"'), cfg.source)
        assert again == cfg


def test_a_sink_shows_its_type_keys_and_never_the_shared_key():
    cfg = config_mod.parse(SINKS)
    text = effective_toml(cfg)
    assert "s3cr3t" not in text and 'shared_key = "(set; not shown)"' in text
    doc = tomllib.loads(text.replace('"(set; not shown)"', '"x"'))
    for table in doc["sinks"]:
        assert set(table) == {"type", "name", "format"} | set(SINK_KEYS[table["type"]])
    assert [e["address"] for e in doc["endpoints"]][-1] == "fd20:ce::254" and doc["suppress"]["vlans"] == [666]


def test_problems_name_the_sink_whose_tls_files_do_not_load(tmp_path):
    assert problems(config_mod.load(None)) == []
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    cfg = config_mod.parse(config_mod.default_text() +
                           f'[[sinks]]\ntype = "tcp"\nname = "siem"\naddress = "h:1"\ntls = true\ntls_ca_file = "{garbage}"\n'
                           f'[[sinks]]\ntype = "tcp"\nname = "lost"\naddress = "h:2"\ntls = true\n'
                           f'tls_ca_file = "{tmp_path}/none.pem"\n'
                           '[[sinks]]\ntype = "tcp"\nname = "system"\naddress = "h:3"\ntls = true\n')
    found = problems(cfg)
    assert len(found) == 2
    assert found[0].startswith("sink 'siem': tls_ca_file ") and str(garbage) in found[0]
    assert found[1].startswith("sink 'lost': tls_ca_file ") and "none.pem" in found[1]
