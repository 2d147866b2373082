"""cli: one line on stderr and exit 2 for every usage or configuration problem; check-config prints the
effective config; probe sends the probe's datagram to a real UDP socket on loopback."""
import socket

import pytest
from click.testing import CliRunner

from imds_flow import config as config_mod
from imds_flow import probe as probe_mod
from imds_flow.check import effective_toml
from imds_flow.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args), prog_name="imds-flow")


def test_check_config_prints_the_effective_config(tmp_path):
    out = invoke("check-config")
    assert out.exit_code == 0 and out.stdout == effective_toml(config_mod.load(None))


@pytest.mark.parametrize("args,message", [
    (["listen", "127.0.0.1:2055", "--workers", "0"], "(see imds-flow listen --help)"),
    (["listen"], "Missing argument"),
    (["no-such-command"], "No such command"),
    (["probe", "localhost", "--export", "v5"], "HOST:PORT"),
    (["probe", "127.0.0.1:9", "--endpoint", "not-an-address"], "--endpoint not-an-address"),
    (["probe", "127.0.0.1:9", "--export", "v5", "--endpoint", "fd00:ec2::254"], "NetFlow v5 carries IPv4 only"),
])
def test_usage_problems_are_one_line_and_exit_2(args, message):
    out = invoke(*args)
    assert out.exit_code == 2, out.output
    assert out.stdout == "" and out.stderr.startswith("imds-flow: ") and out.stderr.count("\n") == 1
    assert message in out.stderr


def test_a_bad_config_is_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[listen]\nbatch_datagrams = -1\n")
    for command in (["check-config"], ["sigma"]):
        out = invoke(*command, "--config", str(bad))
        assert out.exit_code == 2 and out.stderr.startswith("imds-flow: config: ") and "batch_datagrams" in out.stderr


def test_probe_sends_the_probe_datagram():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        port = rx.getsockname()[1]
        out = invoke("probe", f"127.0.0.1:{port}", "--export", "sflow")
        data, _ = rx.recvfrom(65535)
    assert out.exit_code == 0, out.output
    assert out.stdout.startswith(f"sent a sflow test export ({len(data)} bytes) to 127.0.0.1:{port}")
    assert data == probe_mod.build("sflow", "169.254.169.254", agent="127.0.0.1")
