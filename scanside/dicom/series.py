"""Enhancing DICOM series: read, window, enhance frame by frame, write a derived series.

A batch goes on past a bad file and reports every failure at the end; nothing is written over
an input or an existing file, and no log line or message carries a patient attribute.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from tqdm.auto import tqdm

from scanside.errors import InputError

from . import preview as previews
from .read import Instance, collect, read_values, to_stored
from .window import Window, choose
from .write import Derivation, derive, save, series_number

log = logging.getLogger(__name__)


class Enhancer(Protocol):
    """What enhance_series needs of a pipeline: scanside.Pipeline, or a test's stand-in."""

    def enhance(self, image: np.ndarray, **sampling: Any) -> np.ndarray: ...

    def describe(self, **sampling: Any) -> str: ...


@dataclass
class Report:
    written: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


def enhance_values(pipeline: Enhancer, ds: Dataset, values: np.ndarray,
                   window: Optional[Window], sampling: dict[str, Any]) -> tuple[np.ndarray, Window]:
    """(F, H, W) modality values -> enhanced stored values in the source's dtype."""
    inverted = str(ds.PhotometricInterpretation) == "MONOCHROME1"
    result = np.empty_like(values)
    used = None
    for f, frame in enumerate(values):  # (H, W) each; multi-frame objects one frame at a time
        used = choose(ds, frame, window)
        unit = used.to_unit(frame)
        # MONOCHROME1 displays low values white; the model sees every image as displayed.
        out = pipeline.enhance(1 - unit if inverted else unit, **sampling)
        out = 1 - out if inverted else out
        result[f] = used.restore(used.from_unit(out), frame)
    return to_stored(result, ds), used


def describe(pipeline: Enhancer, window: Window, sampling: dict[str, Any]) -> str:
    return (f"{pipeline.describe(**sampling)}; window {window.center:g},{window.width:g} "
            f"({window.source}); values outside the window kept from the source")


def enhance_dataset(pipeline: Enhancer, ds: Dataset, *, window: Optional[Window] = None,
                    series_uid: Optional[str] = None, **sampling: Any) -> Dataset:
    """One in-memory dataset -> its derived, enhanced counterpart (a new instance)."""
    from pydicom.pixels import apply_modality_lut

    from .read import check_header

    check_header(Path("<dataset>"), ds)
    stored = ds.pixel_array.reshape(int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns))
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    result, used = enhance_values(pipeline, ds, values, window, sampling)
    return derive(ds, result, Derivation(describe(pipeline, used, sampling),
                                         series_uid or generate_uid(), series_number(ds)))


def check_output_dir(out_dir: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that is an input folder, or one that cannot be written."""
    out = out_dir.resolve()
    for path in map(Path, inputs):
        folder = path.resolve() if path.is_dir() else path.resolve().parent
        if out == folder:
            raise InputError(f"--out: {out_dir} is the input's own folder; scanside writes "
                             "derived series elsewhere — choose another --out")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out_dir} exists and is not a folder; choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".scanside-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"--out: {out_dir} cannot be written ({exc.strerror}); choose a "
                         "writable folder") from None


def enhance_series(paths: Sequence[Path], pipeline: Enhancer, out_dir: Path, *,
                   window: Optional[Window] = None, preview: bool = False,
                   progress: bool = True, **sampling: Any) -> Report:
    """Enhance every image series under ``paths`` into new series under ``out_dir``."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, paths)
    collected = collect(paths)
    report = Report(failures=list(collected.failures))
    started = time.perf_counter()
    for number, series in enumerate(collected.series, 1):
        uid = generate_uid()  # one new series per source series per run
        folder = out_dir / uid
        bar = tqdm(series.instances, desc=f"series {number}/{len(collected.series)}",
                   unit="file", disable=not progress)
        for index, instance in enumerate(bar):
            try:
                frames = write_instance(instance, pipeline, folder, index, uid, window,
                                        preview, sampling, report)
                report.images += frames
            except InputError as exc:
                report.failures.append((instance.path, str(exc)))
    report.seconds = time.perf_counter() - started
    return report


def write_instance(instance: Instance, pipeline: Enhancer, folder: Path, index: int, uid: str,
                   window: Optional[Window], preview: bool, sampling: dict[str, Any],
                   report: Report) -> int:
    ds, values = read_values(instance)
    result, used = enhance_values(pipeline, ds, values, window, sampling)
    derived = derive(ds, result, Derivation(describe(pipeline, used, sampling), uid,
                                            series_number(ds)))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"IM{index + 1:05d}.dcm"
    save(derived, target)
    report.written.append(target)
    if preview:
        previews.write(target.with_suffix(".png"), values[0], derived, used)
    log.info("wrote %s (%d frame(s), window %s)", target, len(values), used.source)
    return len(values)
