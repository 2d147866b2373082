"""templates_store.TemplateFile: templates written atomically as JSON and read back into a new scope
table (data then decodes without the template being resent); the writer thread saves a changed table
at most once an interval; a file that cannot be read or written is logged, never fatal."""
import json
import logging

from imds_flow import build, wire
from imds_flow.datagrams import DatagramBatch
from imds_flow.exporters import ExporterTable
from imds_flow.flows import FlowBatch
from imds_flow.templates_store import FORMAT, TemplateFile

FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1)]
SRC = ("192.0.2.1", 4739)


def feed(table: ExporterTable, sets: list[bytes], domain: int = 7) -> FlowBatch:
    dg = DatagramBatch.from_payloads([build.ipfix(sets, domain=domain)], src=SRC, ts=100.0)
    out = FlowBatch(8)
    wire.decode(dg, table.lookup(dg.src_hi, dg.src_lo, dg.sport), table, out)
    return out


def template(tid: int = 256) -> bytes:
    return build.template_set(10, {tid: FIELDS})


def data() -> bytes:
    return build.data_set(256, [build.record(FIELDS, ["10.0.0.1", "169.254.169.254", 40000, 80, 6])])


def test_saved_templates_decode_data_after_a_restart(tmp_path):
    path = tmp_path / "state" / "templates.json"
    table = ExporterTable(clock=lambda: 100.0)
    feed(table, [template()])
    TemplateFile(path, table.templates).save()
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT and [e["template_id"] for e in doc["templates"]] == [256]
    assert [p.name for p in path.parent.iterdir()] == ["templates.json"]          # no temporary file left
    restarted = ExporterTable(clock=lambda: 100.0)
    assert feed(restarted, [data()]).n == 0                                       # unknown: it waits
    fresh = ExporterTable(clock=lambda: 100.0)
    assert TemplateFile(path, fresh.templates).load() == 1
    assert feed(fresh, [data()]).n == 1
    assert feed(fresh, [data()], domain=8).n == 0                                 # another domain: its own scope


def test_the_writer_saves_a_changed_table_at_most_once_an_interval(tmp_path):
    path = tmp_path / "templates.json"
    table = ExporterTable(clock=lambda: 100.0)
    store = TemplateFile(path, table.templates, interval=10.0)
    store.maybe_save(0.0)
    assert not path.exists()                                                      # nothing changed yet
    feed(table, [template(256)])
    store.maybe_save(100.0)
    feed(table, [template(257)])
    store.maybe_save(105.0)                                                       # within the interval: kept
    store.close_writer()
    assert store.saves == 1 and len(json.loads(path.read_text())["templates"]) == 1
    assert table.templates.dirty
    store.save()
    assert store.saves == 2 and len(json.loads(path.read_text())["templates"]) == 2 and not table.templates.dirty


def test_unusable_files_are_logged_and_never_fatal(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="imds_flow")
    table = ExporterTable(clock=lambda: 100.0)
    assert TemplateFile(tmp_path / "missing.json", table.templates).load() == 0 and caplog.text == ""
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": FORMAT + 1, "templates": []}))
    assert TemplateFile(other, table.templates).load() == 0 and "not a template state file" in caplog.text
    feed(table, [template()])
    (tmp_path / "file").write_text("")
    store = TemplateFile(tmp_path / "file" / "templates.json", table.templates)   # its folder is a file
    store.save()
    assert store.saves == 0 and table.templates.dirty and "cannot write" in caplog.text


def test_each_save_writes_the_table_as_it_is_now(tmp_path):
    """The writer keeps a template's text between saves: what it writes is still export_state, save
    after save, as templates are resent (a later received time), redefined with another layout,
    added in another scope, and forgotten."""
    path = tmp_path / "templates.json"
    table = ExporterTable(clock=lambda: 100.0)
    store = TemplateFile(path, table.templates)

    def saved():
        store.save()
        return json.loads(path.read_text())["templates"]

    feed(table, [template(256), template(257)])
    assert saved() == table.templates.export_state() and len(saved()) == 2
    dg = DatagramBatch.from_payloads([build.ipfix([template(256)], domain=7)], src=SRC, ts=170.0)
    wire.decode(dg, table.lookup(dg.src_hi, dg.src_lo, dg.sport), table, FlowBatch(8))      # resent, 70 s later
    assert [e["received"] for e in saved()] == [170.0, 100.0] == [e["received"] for e in table.templates.export_state()]
    feed(table, [build.template_set(10, {257: FIELDS[:3]})])                               # another layout
    got = saved()
    assert got == table.templates.export_state() and [len(e["fields"]) for e in got] == [5, 3]
    feed(table, [template(300), template(256)], domain=9)                                   # 256: the same object
    assert saved() == table.templates.export_state() and [e["domain"] for e in saved()] == [7, 7, 9, 9]
    assert table.templates.expire(170.0 + table.templates.lifetime - 1) == 3                # all but the resent one
    assert saved() == table.templates.export_state() and [e["template_id"] for e in saved()] == [256]


def test_a_table_of_many_templates_is_written_whole(tmp_path):
    """More templates than one write call takes (_CHUNK): the file still holds export_state, parsed whole."""
    from imds_flow import templates_store
    table = ExporterTable(clock=lambda: 100.0)
    n = templates_store._CHUNK + 44                                                # exporters, two templates each
    dg = DatagramBatch.from_payloads([build.ipfix([template(256), template(257)], domain=7)] * n,
                                     src=[("192.0.2.1", 4000 + i) for i in range(n)], ts=100.0)
    wire.decode(dg, table.lookup(dg.src_hi, dg.src_lo, dg.sport), table, FlowBatch(8))
    path = tmp_path / "templates.json"
    TemplateFile(path, table.templates).save()
    got = json.loads(path.read_text())["templates"]
    assert len(got) == 2 * n and got == table.templates.export_state()
