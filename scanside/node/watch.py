"""Watch mode (``scanside watch``): for sites that drop files in a folder instead of sending
them. A file is taken once complete — its size and modification time unchanged for
``stable_s`` seconds, and not named ``*.part`` (a sender that writes NAME.part and renames it
is taken at the rename) — copied into the spool and journaled exactly as a received instance;
from there the node's own enhance and forward steps run. The dropped files are never
modified, moved or deleted; the journal remembers which (path, size, time) were taken.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from scanside.errors import InputError

from .server import UID_RE, Node

log = logging.getLogger(__name__)


class Watcher:
    def __init__(self, node: Node, folder: Path, stable_s: float = 2.0) -> None:
        self.node, self.folder, self.stable_s = node, Path(folder), stable_s
        self.seen: dict[Path, tuple[tuple[int, int], float]] = {}  # path -> (size, mtime), since

    def scan(self) -> int:
        """Take every file that became complete; returns how many were taken."""
        journal = self.node.journal
        assert journal is not None
        now, taken = time.monotonic(), 0
        for path in sorted(self.folder.rglob("*")):
            if path.name.startswith(".") or path.name.endswith(".part") or not path.is_file():
                continue
            try:
                stat = path.stat()
            except OSError:  # gone between the listing and now
                continue
            key = (stat.st_size, stat.st_mtime_ns)
            if journal.is_taken(path, *key):
                continue
            previous = self.seen.get(path)
            if previous is None or previous[0] != key:
                self.seen[path] = (key, now)
                continue
            if now - previous[1] >= self.stable_s:
                taken += self.take(path, key)
                self.seen.pop(path, None)
        return taken

    def take(self, path: Path, key: tuple[int, int]) -> int:
        from scanside.dicom.read import read_header

        journal = self.node.journal
        assert journal is not None
        try:
            data = path.read_bytes()
            header = read_header(path).header
        except (InputError, OSError) as exc:
            journal.event("refused", str(exc) if isinstance(exc, InputError)
                          else f"{path}: cannot be read ({exc.strerror})")
            journal.take(path, *key)
            return 0
        if len(data) != key[0]:  # changed while being read: taken on a later scan
            return 0
        sop, series = str(header.SOPInstanceUID), str(header.SeriesInstanceUID)
        if not UID_RE.fullmatch(sop) or not UID_RE.fullmatch(series):
            journal.event("refused", f"{path}: SOP Instance or Series Instance UID is not a UID")
            journal.take(path, *key)
            return 0
        self.node.accept(sop, series, data)
        journal.take(path, *key)  # a crash before this line takes it again: idempotent
        return 1
