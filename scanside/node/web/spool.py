"""What the web page shows of the spool: each series' slices in order, each slice's layers
(source, enhanced, and the uncertainty and change maps where they were computed), and the
layers' values for the viewer.

Read only: the journal lists a series' received instances and derived files; their headers
pair them (a derived image names its source in SourceImageSequence) and order them (the
slice position ``scanside enhance`` sorts by). Headers are cached by path and modification
time, values of the slices last looked at by the same; nothing in the spool is written.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pydicom

from scanside.dicom import parse
from scanside.dicom.read import (frame_count, frame_values, read_header, read_pixels,
                                 slice_position)
from scanside.dicom.window import file_window
from scanside.errors import InputError

from ..journal import Journal

LAYERS = ("source", "enhanced", "uncertainty", "change")
# A derived image's third ImageType value says which map it carries (scanside.dicom.maps).
MAP_TYPES = {"UNCERTAINTY": "uncertainty", "CHANGE": "change"}
PATIENT = ("PatientName", "PatientID", "PatientBirthDate")
HEADER_TAGS = ("SOPInstanceUID", "SOPClassUID", "ImageType", "SourceImageSequence",
               "WindowCenter", "WindowWidth", "NumberOfFrames", "Rows", "Columns")


def series_key(series_uid: str) -> str:
    """A series' name on the page and in its address: a short hash, never the UID itself."""
    return hashlib.sha256(series_uid.encode()).hexdigest()[:12]


@dataclass
class Slice:
    """One frame of one received instance, with its derived layers where they exist."""

    layers: dict[str, tuple[Path, int]] = field(default_factory=dict)  # layer -> (file, frame)
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)  # maps' own windows


@dataclass
class SeriesView:
    key: str
    uid: str
    modality: str
    description: str
    slices: list[Slice]
    window: Optional[tuple[float, float]]  # the files' own, from the first slice
    patient: dict[str, str]  # PATIENT's values; filled only where the page may show them
    size: tuple[int, int]


class Spool:
    """The journal's series and their files, as the page shows them."""

    def __init__(self, journal: Journal, show_patient: bool = False,
                 cached_values: int = 256, cached_headers: int = 100_000,
                 view_seconds: float = 1.0) -> None:
        """``view_seconds``: how long a series' slice list is reused (the viewer asks for it,
        then for each layer of each slice it shows: one listing of the files serves them)."""
        self.journal, self.show_patient = journal, show_patient
        self.lock = threading.Lock()
        self.headers: OrderedDict[tuple[Path, bool], tuple[int, Any]] = OrderedDict()
        self.cached_headers = cached_headers
        self.views: dict[str, tuple[float, SeriesView]] = {}
        self.view_seconds = view_seconds
        self.values: OrderedDict[tuple[Path, int, int], tuple[bytes, str, tuple[int, int]]] = \
            OrderedDict()
        self.cached_values = cached_values
        self.keys: dict[str, str] = {}  # series_key -> series UID

    # -- headers ---------------------------------------------------------------------------
    def header(self, path: Path, received: bool) -> Any:
        """The file's header (an Instance for a received file, read and validated as
        ``scanside enhance`` does; a few tags of a derived one), cached while the file is
        unchanged; None if it cannot be read."""
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        with self.lock:
            cached = self.headers.get((path, received))
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            if received:
                header: Any = read_header(path)
            else:
                with parse.quiet():
                    header = pydicom.dcmread(path, stop_before_pixels=True,
                                             specific_tags=list(HEADER_TAGS))
        except (InputError, OSError, pydicom.errors.InvalidDicomError, ValueError):
            header = None
        with self.lock:
            self.headers[(path, received)] = (mtime, header)
            while len(self.headers) > self.cached_headers:
                self.headers.popitem(last=False)
        return header

    # -- series ----------------------------------------------------------------------------
    def key_of(self, series_uid: str) -> str:
        key = series_key(series_uid)
        with self.lock:
            self.keys[key] = series_uid
        return key

    def uid_of(self, key: str) -> Optional[str]:
        with self.lock:
            uid = self.keys.get(key)
        if uid is None:  # a series listed before this process started: look it up
            for row in self.journal.series_rows(limit=1_000_000):
                if self.key_of(row["series_uid"]) == key:
                    return row["series_uid"]
        return uid

    def summary(self, path: Optional[str]) -> dict[str, str]:
        """Modality and description of a series, from one of its received files (and the
        patient's name, ID and birth date where the page may show them)."""
        found = self.header(Path(path), received=True) if path else None
        return self.described(found.header) if found is not None else \
            {"modality": "", "description": ""}

    def described(self, header: Any) -> dict[str, str]:
        out = {"modality": str(header.get("Modality", "") or ""),
               "description": str(header.get("SeriesDescription", "") or "")}
        if self.show_patient:
            out.update({k: str(header.get(k, "") or "") for k in PATIENT})
        return out

    def series(self, key: str) -> Optional[SeriesView]:
        now = time.monotonic()
        with self.lock:
            cached = self.views.get(key)
        if cached is not None and now - cached[0] < self.view_seconds:
            return cached[1]
        view = self.list_series(key)
        if view is not None:
            with self.lock:
                self.views = {k: v for k, v in self.views.items()
                              if now - v[0] < self.view_seconds}
                self.views[key] = (now, view)
        return view

    def list_series(self, key: str) -> Optional[SeriesView]:
        uid = self.uid_of(key)
        if uid is None:
            return None
        instances, outputs = self.journal.series_files(uid)
        received = [found for _, path, state in instances if state != "refused"
                    for found in [self.header(path, received=True)] if found is not None]
        received.sort(key=slice_position)
        derived: dict[tuple[str, int], dict[str, tuple[Path, int]]] = {}
        windows: dict[tuple[str, int], dict[str, tuple[float, float]]] = {}
        incoming = {path for _, path, _ in instances}
        for path in outputs:
            if path in incoming:  # --forward-originals: a source sent on, not a layer
                continue
            header = self.header(path, received=False)
            layer = layer_of(header)
            if layer is None:
                continue
            source = str(header.SourceImageSequence[0].ReferencedSOPInstanceUID)
            for frame in range(frame_count(header)):
                derived.setdefault((source, frame), {})[layer] = (path, frame)
                own = file_window(header)
                if layer != "enhanced" and own is not None:
                    windows.setdefault((source, frame), {})[layer] = own
        slices = []
        for instance in received:
            sop = str(instance.header.SOPInstanceUID)
            for frame in range(instance.frames):
                layers = {"source": (instance.path, frame), **derived.get((sop, frame), {})}
                slices.append(Slice(layers, windows.get((sop, frame), {})))
        first = received[0].header if received else None
        about = self.described(first) if first is not None else {"modality": "", "description": ""}
        return SeriesView(
            key=key, uid=uid, modality=about.pop("modality"), description=about.pop("description"),
            slices=slices, window=file_window(first) if first is not None else None, patient=about,
            size=(int(first.Rows), int(first.Columns)) if first is not None else (0, 0))

    # -- values ----------------------------------------------------------------------------
    def pixels(self, path: Path, frame: int) -> tuple[bytes, str, tuple[int, int]]:
        """A frame's modality values (HU for CT) as little-endian bytes: int16 where every
        value is a whole number that fits (half the bytes of float32), float32 otherwise."""
        mtime = path.stat().st_mtime_ns
        key = (path, frame, mtime)
        with self.lock:
            if key in self.values:
                self.values.move_to_end(key)
                return self.values[key]
        instance = self.header(path, received=True)
        if instance is None:
            raise InputError(f"{path.name}: cannot be read as an image")
        values = frame_values(read_pixels(instance), frame, path)
        if np.all(np.isfinite(values)) and np.all(values == np.rint(values)) and \
                values.min(initial=0) >= -32768 and values.max(initial=0) <= 32767:
            data, dtype = values.astype("<i2").tobytes(), "int16"
        else:
            data, dtype = values.astype("<f4").tobytes(), "float32"
        found = (data, dtype, values.shape)
        with self.lock:
            self.values[key] = found
            while len(self.values) > self.cached_values:
                self.values.popitem(last=False)
        return found


def layer_of(header: Any) -> Optional[str]:
    """Which layer a derived file is: enhanced, a map, or None (a Parametric Map, SEG or SR
    the viewer does not show, or a file it cannot pair)."""
    if header is None or "SourceImageSequence" not in header or not header.SourceImageSequence:
        return None
    if str(header.get("SOPClassUID", "")) in NOT_IMAGES:
        return None
    kinds = [str(v).upper() for v in header.get("ImageType", [])]
    if len(kinds) > 2 and kinds[2] in MAP_TYPES:
        return MAP_TYPES[kinds[2]]
    return "enhanced" if kinds[:1] == ["DERIVED"] else None


# Parametric Map, Segmentation, and the SR classes: objects the viewer does not draw.
NOT_IMAGES = frozenset({"1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.66.4",
                        "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
                        "1.2.840.10008.5.1.4.1.1.88.34"})
