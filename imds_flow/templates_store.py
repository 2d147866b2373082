"""Templates persisted across restarts: one JSON file, written atomically (temporary file + rename).

Rules: read once at start (a missing file is an empty cache; an unreadable or malformed one is
logged and ignored, never fatal); written when templates changed, at most every `interval`
seconds and at close. Entries keep the time their template was last received, so the lifetime
still applies after a restart.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from .wire.templates import TemplateCache

__all__ = ["TemplateFile"]

log = logging.getLogger("imds_flow")
FORMAT = 1


class TemplateFile:
    def __init__(self, path: str | Path, cache: TemplateCache, interval: float = 10.0):
        self.path = Path(path)
        self.cache = cache
        self.interval = interval
        self._saved_at = float("-inf")

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

    def save(self) -> None:
        """Write the cache now (atomically); errors are logged, the collector keeps running."""
        doc = {"format": FORMAT, "templates": self.cache.export_state()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".templates-", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(doc, f, separators=(",", ":"))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            log.warning("templates: cannot write %s: %s", self.path, e)
            return
        self.cache.dirty = False

    def maybe_save(self, now: float) -> None:
        if self.cache.dirty and now - self._saved_at >= self.interval:
            self._saved_at = now
            self.save()
