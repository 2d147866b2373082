"""siem: CEF and LEEF as their specifications say: standard keys, IPv6 in the c6a* keys, escaping of
the header and extension (CEF), no delimiter or newline in a value (LEEF), test alerts marked."""
from imds_flow import siem
from tests.support.alerts import TS0, alert


def test_cef_escaping_and_ipv6_as_the_specification_says():
    text = siem.cef(alert(1, src="fd00:ec2::254", dst="2001:db8::7", exporter="2001:db8::1",
                          endpoint="x=y\\z|w\r\nv", direction="response"))
    header, ext = text.rsplit("|", 1)[0], text.split("|", 7)[7]
    header = "|".join(text.split("|", 7)[:7])
    assert header.startswith("CEF:0|imds-flow|imds-flow|") and header.endswith("(IMDS impersonation)|9")
    assert "c6a2=fd00:ec2::254 c6a2Label=Source IPv6 Address" in ext and " src=" not in " " + ext
    assert "c6a3=2001:db8::7 c6a3Label=Destination IPv6 Address" in ext
    assert "cs1=x\\=y\\\\z|w\\nv cs1Label=endpoint" in ext
    assert siem.cef(alert(1, endpoint="a|b"), "c").count("|") == 7 + 1     # header pipes only, the one in ext is data
    name = siem.cef({**alert(1), "direction": "re|q"}).split("|")[5]
    assert name == "Instance-metadata traffic on a local network"


def test_cef_standard_keys_and_fixed_custom_slots():
    text = siem.cef(alert(1, url="/latest/meta-data/", http_method="GET"), "collector-1")
    ext = text.split("|", 7)[7]
    for pair in ("src=10.1.2.3", "dst=169.254.169.254", "spt=1001", "dpt=80", "proto=TCP", "act=alert",
                 f"rt={int(round((TS0 + 1) * 1000))}", "cnt=1", "in=400", "dvc=192.0.2.1", "deviceDirection=1",
                 "request=/latest/meta-data/", "requestMethod=GET", "cs1=aws-imds-ipv4 cs1Label=endpoint",
                 "cs3=netflow v9 cs3Label=exportFormat", "cs5=collector-1 cs5Label=collector", "cn1=30 cn1Label=vlan"):
        assert pair in ext, pair
    assert "msg=" not in ext and not text.split("|")[5].startswith("TEST")
    assert "dhost=" not in ext                         # no host: no key
    ext = siem.cef(alert(1, url="/latest/api/token", http_method="PUT", http_host="169.254.169.254")).split("|", 7)[7]
    assert "requestMethod=PUT" in ext and "dhost=169.254.169.254" in ext


def test_test_alerts_are_marked_in_both_formats():
    probe = alert(1, test=True)
    assert siem.event_name(probe) == "TEST Instance-metadata request on a local network"
    assert siem.cef(probe).split("|")[5].startswith("TEST ") and "msg=TEST alert sent by imds-flow probe" in siem.cef(probe)
    attrs = dict(kv.split("=", 1) for kv in siem.leef(probe).split("|", 6)[6].split("\t"))
    assert attrs["test"] == "true" and attrs["name"].startswith("TEST ")


def test_leef_header_and_attributes():
    text = siem.leef(alert(2, src="fd00:ec2::254", direction="response"), "collector-1")
    head, body = text.split("|", 6)[:6], text.split("|", 6)[6]
    assert head[0] == "LEEF:2.0" and head[1:3] == ["imds-flow", "imds-flow"] and head[5] == "x09"
    attrs = dict(kv.split("=", 1) for kv in body.split("\t"))
    assert attrs["src"] == "fd00:ec2::254" and attrs["srcPort"] == "1002" and attrs["proto"] == "TCP"
    assert attrs["devTime"] == "Oct 09 2025 08:53:22.250 UTC" and attrs["devTimeFormat"] == "MMM dd yyyy HH:mm:ss.SSS z"
    assert attrs["cat"] == "response" and attrs["collector"] == "collector-1" and attrs["vlan"] == "30"
    assert "url" not in attrs and "httpHost" not in attrs     # absent values are left out, never empty
    body = siem.leef(alert(2, url="/latest/api/token", http_method="PUT", http_host="169.254.169.254")).split("|", 6)[6]
    attrs = dict(kv.split("=", 1) for kv in body.split("\t"))
    assert (attrs["url"], attrs["method"], attrs["httpHost"]) == ("/latest/api/token", "PUT", "169.254.169.254")
