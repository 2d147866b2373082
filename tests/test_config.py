"""Config: the shipped file is valid and embedded; every bad value is one line naming key and value."""
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from imds_flow.config import ConfigError, load, parse

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_is_the_embedded_default():
    assert (ROOT / "config/imds-flow.toml").read_bytes() == (ROOT / "imds_flow/default.toml").read_bytes()
    cfg = load(ROOT / "config/imds-flow.toml")
    assert [(e.name, e.address) for e in cfg.endpoints] == [("aws-imds-ipv4", "169.254.169.254"),
                                                            ("aws-imds-ipv6", "fd00:ec2::254")]
    assert cfg.suppress.source_subnets == () and cfg.suppress.vlans == ()
    assert load(None).endpoints == cfg.endpoints


def test_commented_examples_are_valid_when_uncommented():
    text = (ROOT / "config/imds-flow.toml").read_text()
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("# [[endpoints]]") or s.startswith("# name =") or s.startswith("# address ="):
            line = s[2:]
        lines.append(line)
    cfg = parse("\n".join(lines))
    names = {e.name: e.network for e in cfg.endpoints}
    assert names["aws-ecs-task-metadata"] == ipaddress.ip_network("169.254.170.2/32")
    assert names["alibaba-metadata"] == ipaddress.ip_network("100.100.100.200/32")
    assert len(cfg.endpoints) > 5


def test_fixed_keys_parse():
    cfg = parse('''
[[endpoints]]
name = "imds"
address = "169.254.169.254"
[[endpoints]]
name = "v6net"
address = "fd00:ec2::/64"
[suppress]
source_subnets = ["10.0.0.0/8", "2001:db8::/32"]
vlans = [0, 10, 4095]
''')
    assert cfg.endpoints[1].network == ipaddress.ip_network("fd00:ec2::/64")
    assert cfg.suppress.vlans == (0, 10, 4095)
    assert len(cfg.suppress.source_subnets) == 2


EP = '[[endpoints]]\nname = "a"\naddress = "169.254.169.254"\n'


@pytest.mark.parametrize("text, words", [
    ("colour = 1\n" + EP, ["unknown key colour", "1"]),
    (EP + "colour = 1\n", ["unknown key endpoints[0].colour", "1"]),
    (EP + "[suppress]\nvlan = [1]\n", ["suppress.vlan", "[1]"]),
    (EP + "[suppress]\nvlans = [4096]\n", ["suppress.vlans[0]", "4096"]),
    (EP + "[suppress]\nvlans = [-1]\n", ["suppress.vlans[0]", "-1"]),
    (EP + '[suppress]\nsource_subnets = ["10.0.0.0/33"]\n', ["suppress.source_subnets[0]", "10.0.0.0/33"]),
    ('[[endpoints]]\nname = "a"\naddress = "169.254.169.999"\n', ["endpoints[0].address", "169.254.169.999"]),
    ('[[endpoints]]\nname = "a"\n', ["endpoints[0].address", "missing"]),
    ("", ["endpoints"]),
    (EP + "[listen]\nrcvbuf_bytes = 'big'\n", ["listen.rcvbuf_bytes", "'big'"]),
    (EP + "[alerts]\nfold_window_seconds = -1\n", ["alerts.fold_window_seconds", "-1"]),
    (EP + "[listen]\ncoalesce_seconds = 0.5\n", ["listen.coalesce_seconds", "0.5", "<= 0.1"]),
    (EP + "[endpoints\n", ["not valid TOML"]),
])
def test_bad_config_names_key_and_value(text, words):
    with pytest.raises(ConfigError) as e:
        parse(text)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(EP + "[suppress]\nvlans = [5000]\n")
    for args in (["listen", ":0", "--config", str(bad)], ["replay", str(bad), "--config", str(bad)]):
        r = subprocess.run([sys.executable, "-m", "imds_flow.cli", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "suppress.vlans[0] = 5000" in lines[0]
