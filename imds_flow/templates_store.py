"""Templates persisted across restarts: one JSON file, written atomically (temporary file + rename).

Rules: read once at start (a missing file is an empty cache; an unreadable or malformed one is
logged and ignored, never fatal); when templates changed, at most every `interval` seconds, the loop
copies the table (a dict copy, no encoding) and a writer thread encodes, writes and fsyncs it, so
the loop never waits for the disk; close() writes the last state and waits for it. Entries keep the
time their template was last received, so the lifetime still applies after a restart.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
from pathlib import Path

from .wire.scopes import ScopeTable, template_entry

__all__ = ["TemplateFile"]

log = logging.getLogger("imds_flow")
FORMAT = 1


_CHUNK = 256                                  # template entries per write call


_json = json.JSONEncoder(separators=(",", ":")).encode   # one encoder (json.dumps with options makes one a call)


class TemplateFile:
    def __init__(self, path: str | Path, cache: ScopeTable, interval: float = 1.0):
        self.path = Path(path)
        self.cache = cache
        self.interval = interval
        self.saves = 0                        # files written
        self._saved_at = float("-inf")
        self._cond = threading.Condition()
        self._queued: dict | None = None      # the latest copy of cache.templates not yet written
        self._closing = False
        self._thread: threading.Thread | None = None
        # JSON text kept between saves (writer thread only): per scope id, and per Template object
        # (id -> (the object, its text): the object is held, so its id is not reused meanwhile)
        self._scope_text: dict[int, str] = {}
        self._layout_text: dict[int, tuple] = {}

    def load(self) -> int:
        """Templates read into the cache; 0 when the file is missing or unusable."""
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            log.warning("templates: cannot read %s (%s); starting without saved templates", self.path, e)
            return 0
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("templates"), list):
            log.warning("templates: %s is not a template state file of format %d; ignored", self.path, FORMAT)
            return 0
        taken = self.cache.import_state(doc["templates"])
        log.info("templates: %d restored from %s", taken, self.path)
        return taken

    def maybe_save(self, now: float) -> None:
        """From the loop (tick): hand a copy of a changed table to the writer thread."""
        if self.cache.dirty and now - self._saved_at >= self.interval:
            self._saved_at = now
            self.cache.dirty = False
            with self._cond:
                self._queued = dict(self.cache.templates)
                self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="imds-flow templates", daemon=True)
                self._thread.start()

    def save(self) -> None:
        """Write the cache now and wait for it (close, tests); errors are logged, never raised."""
        self.close_writer()
        self.cache.dirty = False
        self._write(dict(self.cache.templates))

    def close_writer(self) -> None:
        """Let the writer thread finish what it holds, then stop it."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._queued is None and not self._closing:
                    self._cond.wait()
                held, self._queued = self._queued, None
            if held is None:
                return
            self._write(held)

    def _entries(self, held: dict) -> list[str]:
        """The JSON text of every template of `held`, as export_state's entries would encode. The text
        of each scope and of each Template object is kept between saves (a resent template is the
        same object, and so are the same templates from many exporters): with thousands of
        exporters, encoding every entry again cost half a second of CPU per save (10 000 templates),
        and a save comes whenever one template changed. Small steps, so the loop thread gets the GIL
        back between them."""
        scopes, layouts, out = self._scope_text, self._layout_text, []
        for key in sorted(held):                       # ints: sorting (key, value) pairs is ten times slower
            _, received, t = held[key]
            sid = key >> 16
            scope = scopes.get(sid)
            if scope is None:
                scope = scopes[sid] = "{" + _json(self.cache.scope_entry(sid))[1:-1] + ","
            layout = layouts.get(id(t))
            if layout is None or layout[0] is not t:
                layout = layouts[id(t)] = (t, _json(template_entry(t))[1:-1] + ',"received":')
            # (json.dumps of a finite float is its repr, at a tenth of the cost: 10 000 a save)
            out.append(scope + layout[1] + (repr(received) if math.isfinite(received) else json.dumps(received)) + "}")
        if len(layouts) > 2 * len(held) + 64:          # texts of templates gone: start afresh next time
            layouts.clear()
        return out

    def _write(self, held: dict) -> None:
        entries = self._entries(held)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".templates-", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(f'{{"format":{FORMAT},"templates":[')
                    for i in range(0, len(entries), _CHUNK):   # short C calls: the loop thread keeps the GIL
                        f.write(("," if i else "") + ",".join(entries[i:i + _CHUNK]))
                    f.write("]}")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            self.cache.dirty = True               # tried again at the next interval
            log.warning("templates: cannot write %s: %s", self.path, e)
            return
        self.saves += 1
