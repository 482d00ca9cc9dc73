"""Enhancing DICOM series: read, window, enhance frame by frame, write a derived series.

A batch goes on past a bad file and reports every failure at the end; nothing is written over
an input or an existing file, and no log line or message carries a patient attribute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, Optional, Protocol, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from tqdm.auto import tqdm

from scanside.batch import Report, one_file
from scanside.errors import InputError, OutputError
from scanside.files import folder_lock, remove_partials
from scanside.runtime.parallel import in_order
from scanside.runtime.maps import CHANGE_K, check_k, check_maps
from scanside.runtime.sampling import Sampling

from . import parse
from . import preview as previews
from .read import Collected, Instance, check_header, collect, frame_count, frame_values, read_pixels, to_stored
from .maps import KINDS as MAP_KINDS
from .maps import FrameMaps, in_values, map_datasets, map_series_uid, pixel_area_mm2
from .window import Window, choose
from .write import Derivation, derive, derived_uid, encode, series_number, write_bytes
from .write import series_uid as derived_series_uid

if TYPE_CHECKING:
    from scanside.store import Store

log = logging.getLogger(__name__)


class Enhancer(Protocol):
    """What enhance_series needs of a pipeline: scanside.Pipeline, or a test's stand-in."""

    def enhance(self, image: np.ndarray, sampling: Sampling) -> np.ndarray: ...

    def enhance_maps(self, image: np.ndarray, sampling: Sampling, maps: Any,
                     **options: Any) -> Any: ...  # only with maps

    def describe(self, sampling: Sampling) -> str: ...

    def fingerprint(self, sampling: Sampling) -> str: ...


@dataclass
class Frames:
    """An instance's frames enhanced: (F, H, W) stored values in the source's dtype, the last
    frame's window, the first frame's modality values, and each frame's maps when asked."""

    stored: np.ndarray
    window: Window
    first: np.ndarray
    maps: list[FrameMaps]


def enhance_frames(pipeline: Enhancer, ds: Dataset, path: Path, window: Optional[Window],
                   sampling: Sampling, noise: Any = None) -> tuple[np.ndarray, Window, np.ndarray]:
    """Every frame, decoded, enhanced and stored one at a time -> ((F, H, W) stored values in
    the source's dtype, the last frame's window, the first frame's modality values)."""
    frames = run_frames(pipeline, ds, path, window, sampling, noise)
    return frames.stored, frames.window, frames.first


def run_frames(pipeline: Enhancer, ds: Dataset, path: Path, window: Optional[Window],
               sampling: Sampling, noise: Any = None, maps: tuple[str, ...] = (),
               change_k: float = CHANGE_K) -> Frames:
    """``enhance_frames``, and with ``maps`` (runtime.maps names) each frame's maps too."""
    inverted = str(ds.PhotometricInterpretation) == "MONOCHROME1"
    frames = frame_count(ds)
    if maps and str(ds.get("Modality", "")) != "CT":
        raise InputError(f"{path}: modality {ds.get('Modality', '') or 'unknown'}; maps are "
                         "written in HU, for CT only so far (leave out --maps for this file)")
    if maps and frames > 1:
        raise InputError(f"{path}: {frames} frames in one instance; maps are made for "
                         "single-frame images only so far (leave out --maps for this file)")
    result, used, first, made = None, None, None, []
    for f in range(frames):
        values = frame_values(ds, f, path)  # (H, W) modality values of this frame only
        used = choose(ds, values, window)
        unit = used.to_unit(values)
        # MONOCHROME1 displays low values white; the model sees every image as displayed.
        shown = 1 - unit if inverted else unit
        extra = {} if noise is None else {"noise": noise}
        if maps:
            enhanced = pipeline.enhance_maps(shown, sampling, maps, change_k=change_k, **extra)
            out = enhanced.image
            made.append(in_values(enhanced.maps, used, values, inverted, pixel_area_mm2(ds)))
        else:
            out = pipeline.enhance(shown, sampling, **extra)
        out = 1 - out if inverted else out
        stored = to_stored(used.restore(used.from_unit(out), values), ds, f)
        if result is None:
            result, first = np.empty((frames, *stored.shape), stored.dtype), values
        result[f] = stored
    return Frames(result, used, first, made)


def describe(pipeline: Enhancer, window: Window, sampling: Sampling) -> str:
    return (f"{pipeline.describe(sampling)}; window {window.center:g},{window.width:g} "
            f"({window.source}); values outside the window kept from the source")


def run_fingerprint(pipeline: Enhancer, window: Optional[Window], sampling: Sampling,
                    noise: Any = None) -> str:
    """The pipeline's fingerprint with the window argument: what derived UIDs come from.
    ``noise``: a caller's noise (see Pipeline.enhance), part of the fingerprint."""
    base = (pipeline.fingerprint(sampling) if noise is None
            else pipeline.fingerprint(sampling, noise=noise))
    if not base:
        return ""
    chosen = "per file" if window is None else f"{window.center!r},{window.width!r}"
    return hashlib.sha256(f"{base}|window {chosen}".encode()).hexdigest()


def enhance_dataset(ds: Dataset, pipeline: Enhancer, sampling: Optional[Sampling] = None, *,
                    window: Optional[Window] = None, series_uid: Optional[str] = None,
                    noise: Any = None, **settings: Any) -> Dataset:
    """One in-memory dataset -> its derived, enhanced counterpart (a new instance; the same
    UIDs each time for the same source, engine and settings). ``sampling``: see
    scanside.Sampling (keyword settings as before still work in its place); ``noise``: as for
    Pipeline.enhance."""
    settings.pop("progress", None)  # accepted as before; a single dataset shows no progress
    if isinstance(pipeline, Dataset) and not isinstance(ds, Dataset):
        ds, pipeline = pipeline, ds  # scanside 0.1.0's order: enhance_dataset(pipeline, ds)
    if not isinstance(ds, Dataset):
        raise InputError(f"ds: expected a pydicom Dataset, got {type(ds).__name__}; call "
                         "enhance_dataset(ds, pipeline, sampling)")
    sampling = Sampling.of(sampling, **settings)
    where = Path("<dataset>")
    with parse.quiet():
        parse.decode_all(ds, where)
    check_header(where, ds)
    if "PixelData" not in ds:
        raise InputError(f"{where}: no pixel data; only images can be enhanced")
    parse.check_pixel_length(ds, where)
    result, used, _ = enhance_frames(pipeline, ds, where, window, sampling, noise)
    fingerprint = run_fingerprint(pipeline, window, sampling, noise)
    uid = series_uid or derived_series_uid(str(ds.get("SeriesInstanceUID", "")), fingerprint)
    return derive(ds, result, Derivation(describe(pipeline, used, sampling), uid,
                                         series_number(ds), fingerprint=fingerprint))


def check_output_dir(out_dir: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that is an input folder, or one that cannot be written."""
    out = out_dir.resolve()
    for path in map(Path, inputs):
        folder = path.resolve() if path.is_dir() else path.resolve().parent
        if out == folder:
            raise InputError(f"out_dir: {out_dir} is the input's own folder; scanside writes "
                             "derived series elsewhere — choose another output folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"out_dir: {out_dir} exists and is not a folder; choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".scanside-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"out_dir: {out_dir} cannot be written ({exc.strerror}); choose a "
                         "writable folder") from None


def enhance_series(paths: Sequence[Path], pipeline: Enhancer, out_dir: Path, *,
                   window: Optional[Window] = None, preview: bool = False,
                   progress: bool = True, overwrite: bool = False,
                   on_output: Optional[Callable[[Path], None]] = None,
                   names: str = "position", workers: int = 1,
                   sampling: Optional[Sampling] = None, noise: Any = None,
                   maps: "str | Sequence[str] | None" = None, change_k: float = CHANGE_K,
                   **settings: Any) -> Report:
    """Enhance every image series under ``paths`` into new series under ``out_dir``.

    ``maps``: "uncertainty" and/or "change" (scanside.runtime.maps): for each instance, its
    maps as Parametric Maps, derived grayscale images and the flagged change as a SEG, each
    kind in a series of its own beside the enhanced one (scanside.dicom.maps), and their
    counts in the report (``Report.maps``); ``change_k``: the change mask's threshold.

    Resumable: UIDs and file names are the same on every run with the same inputs, engine and
    settings, so a rerun after a crash or a kill skips the instances already written (checked
    by their SOP Instance UID) and removes the partial files the interrupted run left. An
    output that cannot be written (disk full, read-only) stops the batch with OutputError.
    ``on_output(path)`` is called for each derived file as soon as it is finished (written
    now or by an earlier run), e.g. to send it on while the rest of the series runs.
    ``names``: "position" (IM00001.dcm ... in slice order: stable while the inputs are) or
    "uid" (the derived SOP Instance UID: stable when a series grows between runs, as on a
    node where late or out-of-order slices arrive). ``workers``: instances enhanced at once,
    each read, enhanced and written by one worker thread while the others run (see
    scanside.runtime.parallel; load the pipeline with ``threads_per_worker(workers)``);
    reports, ``on_output`` calls and file names stay in the series' order. ``sampling``: see
    scanside.Sampling (keyword settings as before still work in its place); ``noise``: as for
    Pipeline.enhance, the same for every frame."""
    sampling = Sampling.of(sampling, **settings)
    out_dir = Path(out_dir)
    with opened_batch(paths, out_dir) as (collected, report):
        fingerprint = run_fingerprint(pipeline, window, sampling, noise)
        map_names = check_maps(maps)  # not ``names``: that is the file naming
        if map_names and not fingerprint:
            raise InputError("maps: need a run that can be identified (its map series' UIDs "
                             "follow from it); a noise function cannot be: pass an array or "
                             "a seed instead, or leave out maps")
        job = Job(pipeline, window, preview, sampling, fingerprint, overwrite, noise, map_names,
                  check_k(change_k), model_name(pipeline))
        by_uid = names == "uid" and bool(fingerprint)
        for number, series in enumerate(collected.series, 1):
            folder = out_dir / derived_series_uid(series.uid, fingerprint)
            stems = [job.expected_uid(i) if by_uid else f"IM{n:05d}"
                      for n, i in enumerate(series.instances, 1)]
            targets = [(instance, folder / f"{name}.dcm")
                       for instance, name in zip(series.instances, stems)]
            bar = tqdm(total=len(targets), desc=f"series {number}/{len(collected.series)}",
                       unit="file", disable=not progress)
            with bar:
                for (instance, target), outcome in in_order(job.attempt, targets, workers):
                    bar.update()
                    done = outcome.result()  # raises what stops the batch (disk full)
                    report.absorb(done)
                    if on_output is not None and not done.failures:
                        with one_file(instance.path, report):
                            on_output(target)
    return report


@contextmanager
def opened_batch(paths: Sequence[Path], out_dir: Path) -> Iterator[tuple[Collected, Report]]:
    """What every DICOM batch into ``out_dir`` starts with (enhance_series, segment_series):
    the folder checked and locked, partial files of an interrupted run removed, the inputs
    collected, and a report holding the files that could not be read; the report's seconds
    are set when the block ends, however it ends."""
    check_output_dir(out_dir, paths)
    with folder_lock(out_dir, "out_dir"):
        stale = remove_partials(out_dir)
        if stale:
            log.warning("removed %d partial file(s) an interrupted run left in %s", stale, out_dir)
        collected = collect(paths)
        report = Report(failures=list(collected.failures))
        started = time.perf_counter()
        try:
            yield collected, report
        finally:
            report.seconds = time.perf_counter() - started


def model_name(pipeline: Enhancer) -> str:
    """A short name of the model for the map objects' equipment (its checkpoint's hash)."""
    manifest = getattr(pipeline, "manifest", None)
    return f"scanside model {manifest.source_hash[:16]}" if manifest is not None else "scanside"


def stored_uid(source: "Path | IO[bytes]") -> str:
    """The SOP Instance UID of an existing output ('' if it cannot be read as DICOM)."""
    try:
        with parse.quiet():
            return str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
    except Exception:  # noqa: BLE001 - whatever it is, it is not our finished result
        return ""


@dataclass
class Job:
    """One run's settings, applied to each instance."""

    pipeline: Enhancer
    window: Optional[Window]
    preview: bool
    sampling: Sampling
    fingerprint: str
    overwrite: bool
    noise: Any = None  # a caller's noise (Pipeline.enhance); None: the seed's draws
    maps: tuple[str, ...] = ()  # runtime.maps names: their DICOM beside the enhanced series
    change_k: float = CHANGE_K
    model_name: str = "scanside"

    def expected_uid(self, instance: Instance) -> str:
        return derived_uid("instance", str(instance.header.SOPInstanceUID), self.fingerprint)

    @property
    def maps_fingerprint(self) -> str:
        """What the map objects' UIDs come from: the run's fingerprint, the change mask's k
        and the model's calibration (neither changes the enhanced image)."""
        if not self.fingerprint:
            return ""
        calibration = getattr(getattr(self.pipeline, "manifest", None), "maps", None)
        text = f"{self.fingerprint}|k {self.change_k!r}|{json.dumps(calibration, sort_keys=True)}"
        return hashlib.sha256(text.encode()).hexdigest()

    def map_targets(self, instance: Instance, target: Path) -> dict[str, Path]:
        """Where each map object of ``instance`` goes: beside the enhanced series, in the
        map's own series folder, under the enhanced file's name."""
        if not self.maps:
            return {}
        kinds = [k for k in MAP_KINDS if k.split("-")[0] in self.maps]
        return {k: target.parent.parent / map_series_uid(instance.header, self.maps_fingerprint,
                                                         k) / target.name for k in kinds}

    def finished(self, instance: Instance, target: Path) -> bool:
        """True if an earlier run wrote this instance's result (same SOP Instance UID); a
        different file in its place is refused unless ``overwrite``."""
        if not target.exists():
            return False
        complete = (not self.preview or target.with_suffix(".png").exists()) and all(
            path.exists() for path in self.map_targets(instance, target).values())
        return self.accept(instance, str(target), stored_uid(target), complete)

    def accept(self, instance: Instance, name: str, found: str, complete: bool = True) -> bool:
        """Whether the existing output ``name`` (SOP Instance UID ``found``) is this run's
        finished result for ``instance``; refuses another file unless ``overwrite``."""
        ours = bool(self.fingerprint) and found == self.expected_uid(instance)
        if ours and complete:
            return True
        if ours or self.overwrite:
            return False
        raise InputError(f"{name}: already exists and holds another instance, not this run's "
                         f"result for {instance.path}; remove it, choose another output folder, or "
                         "pass overwrite=True (--overwrite)")

    def derive(self, instance: Instance, series: str) -> "Derived":
        """``instance`` enhanced into the derived series ``series`` (and its maps)."""
        ds = read_pixels(instance)
        frames = run_frames(self.pipeline, ds, instance.path, self.window, self.sampling,
                            self.noise, self.maps, self.change_k)
        text = describe(self.pipeline, frames.window, self.sampling)
        derived = derive(ds, frames.stored, Derivation(text, series, series_number(ds),
                                                       fingerprint=self.fingerprint))
        extras: dict[str, bytes] = {}
        counts: dict[str, Any] = {}
        if frames.maps:
            # The counts go in the map objects only: the enhanced instance is the same bytes
            # with or without maps (its UID does not depend on them).
            counts = frames.maps[0].counts
            for kind, made in map_datasets(ds, frames.maps[0], self.maps_fingerprint,
                                           self.model_name, text).items():
                extras[kind] = encode(made, instance.path)
        data = encode(derived, instance.path)  # encoding problems are the input's, not disk's
        return Derived(data, derived, frames.first, frames.window, len(frames.stored), extras,
                       counts)

    def run_into(self, instance: Instance, store: "Store", key: str, report: Report) -> None:
        """``run`` for an output on a store (scanside.store): ``key`` is SERIES_UID/NAME."""
        if store.exists(key):
            with store.open_input(key) as stream:
                found = stored_uid(stream)
            if self.accept(instance, store.name(key), found):
                report.skipped.append(Path(key))
                return
        done = self.derive(instance, key.rsplit("/", 2)[-2])
        store.write(key, done.data)
        report.written.append(Path(key))
        report.images += done.frames

    def attempt(self, item: "tuple[Instance, Path]") -> Report:
        """``run`` for one (instance, target) of a batch, into a report of its own (workers
        run several at once; the batch adds them up in order)."""
        instance, target = item
        report = Report()
        with one_file(instance.path, report):
            self.run(instance, target, report)
        return report

    def run(self, instance: Instance, target: Path, report: Report) -> None:
        if self.finished(instance, target):
            report.skipped.append(target)
            return
        done = self.derive(instance, target.parent.name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # The maps first: the enhanced file is what marks the instance finished.
            for kind, path in self.map_targets(instance, target).items():
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(done.extras[kind], path, overwrite=True)
                report.written.append(path)
            write_bytes(done.data, target, overwrite=True)  # finished() refused what is not ours
            if self.preview:
                previews.write(target.with_suffix(".png"), done.first, done.dataset, done.window,
                               overwrite=True)
        except OSError as exc:
            raise OutputError(f"out_dir: cannot write {target} ({exc.strerror or exc}); the files "
                              "this run finished before it are kept; free space or fix the "
                              "folder's permissions and run the same command again to "
                              "resume") from None
        report.written.append(target)
        report.images += done.frames
        if done.counts:
            report.counts.append({"file": target.name, "series": target.parent.name[-12:],
                                **done.counts})
        log.info("wrote %s (%d frame(s), window %s)", target, done.frames, done.window.source)


@dataclass
class Derived:
    """One instance's results: the enhanced file's bytes and dataset, its first frame's
    modality values, the window used, its frame count, the map objects' bytes by kind, and
    the maps' counts."""

    data: bytes
    dataset: Dataset
    first: np.ndarray
    window: Window
    frames: int
    extras: dict[str, bytes]
    counts: dict[str, Any]
