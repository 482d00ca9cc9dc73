"""Segmenting DICOM series (`scanside segment`, `scanside annotate`): a DICOM SEG per series,
and for annotation a TID 1500 Structured Report of the lesion candidates.

Each image series under the inputs is read slice by slice, windowed as enhancement windows it,
and put through a segmentation engine (``Pipeline.segment``). The slices' masks become one SEG
per series and Frame of Reference (binary, or fractional: the probability), referencing every
source instance, in a new series; with ``annotate`` each slice's connected regions are
measured as candidates (scanside/dicom/candidates.py) and listed in an SR beside the SEG, with
the research-aid statement. ``preview`` writes a PNG per slice with the mask's outline.

Like enhancement: a bad file is reported and the batch goes on, the UIDs and names follow from
the sources and the run's fingerprint (a rerun skips a series whose objects are written), and
nothing is written over an input. Only single-frame images are segmented so far.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import numpy as np
from pydicom.dataset import Dataset
from tqdm.auto import tqdm

from scanside.batch import Report, one_file
from scanside.errors import InputError, OutputError
from scanside.files import atomic_path
from scanside.runtime.sampling import Sampling

from . import candidates as found
from .read import Instance, frame_count, frame_values, read_pixels
from .seg import by_frame_of_reference  # highdicom: segmenting needs the annotate extra
from .series import opened_batch, stored_uid
from .window import Window, choose
from .write import derived_uid, encode, series_number, write_bytes

log = logging.getLogger(__name__)

RESEARCH_AID = ("Research aid: lesion candidates marked by scanside's model, trained on "
                "synthetic CT only; not a diagnosis and not validated for clinical use.")
SEG_OFFSET, SR_OFFSET = 600, 700  # series numbers: the source's + 1000 + these


class Segmenter(Protocol):
    """What segment_series needs of a pipeline (scanside.Pipeline or a test's stand-in)."""

    manifest: Any

    def segment(self, image: np.ndarray, sampling: Optional[Sampling] = None, *,
                seeds: Optional[int] = None, threshold: Optional[float] = None) -> Any: ...

    def describe_segment(self, sampling: Optional[Sampling] = None, seeds: Optional[int] = None,
                         threshold: Optional[float] = None) -> str: ...

    def segment_fingerprint(self, sampling: Optional[Sampling] = None,
                            seeds: Optional[int] = None,
                            threshold: Optional[float] = None) -> str: ...


@dataclass
class Slice:
    """One segmented source image."""

    instance: Instance
    dataset: Dataset
    values: np.ndarray  # modality values
    window: Window
    probability: np.ndarray
    mask: np.ndarray
    candidates: list[found.Candidate]


@dataclass(frozen=True)
class Settings:
    sampling: Sampling
    seeds: Optional[int]
    threshold: Optional[float]
    window: Optional[Window]
    fractional: bool
    annotate: bool
    preview: bool
    overwrite: bool
    modalities: tuple[str, ...] = ()  # the only modalities the model reads (empty: any)


def labels_of(pipeline: Segmenter) -> list:
    from .seg import Label

    out = []
    for label in pipeline.manifest.labels:
        code = lambda c: (c["scheme"], c["value"], c["meaning"])  # noqa: E731
        out.append(Label(int(label["label"]), str(label["name"]), code(label["category"]),
                         code(label["type"])))
    return out


def model_name(pipeline: Segmenter) -> str:
    return f"scanside model {pipeline.manifest.source_hash[:16]}"


def segment_slice(pipeline: Segmenter, instance: Instance, settings: Settings) -> Slice:
    ds = read_pixels(instance)
    modality = str(ds.get("Modality", "") or "unknown")
    if settings.modalities and modality not in settings.modalities:
        raise InputError(f"{instance.path}: modality {modality}; this model reads "
                         f"{'/'.join(settings.modalities)} only (give a segmentation engine "
                         "made for it with --engine)")
    if frame_count(ds) > 1:
        raise InputError(f"{instance.path}: {frame_count(ds)} frames in one instance; segment "
                         "takes single-frame images only so far")
    values = frame_values(ds, 0, instance.path)
    used = choose(ds, values, settings.window)
    unit = used.to_unit(values)
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        unit = 1 - unit  # the model sees every image as displayed
    result = pipeline.segment(unit, settings.sampling, seeds=settings.seeds,
                              threshold=settings.threshold)
    marks = found.find(result.probability, result.mask, values) if settings.annotate else []
    mask, probability = result.mask, result.probability
    if settings.annotate:  # the SEG holds what the report lists: regions too small are not
        mask = np.zeros_like(mask)
        for candidate in marks:
            mask |= candidate.full_mask(mask.shape)
        probability = np.where(mask, probability, 0.0).astype(np.float32)
    return Slice(instance, ds, values, used, probability, mask, marks)


def run_fingerprint(pipeline: Segmenter, settings: Settings) -> str:
    base = pipeline.segment_fingerprint(settings.sampling, settings.seeds, settings.threshold)
    window = "per file" if settings.window is None else \
        f"{settings.window.center!r},{settings.window.width!r}"
    text = (f"{base}|window {window}|fractional {settings.fractional}|annotate "
            f"{settings.annotate}|{found.MIN_AREA_PX}")
    return hashlib.sha256(text.encode()).hexdigest()


def object_uids(sources: Sequence[Dataset], fingerprint: str) -> dict[str, tuple[str, str]]:
    """(series UID, SOP Instance UID) of the SEG and the SR of one part of a series: from its
    series, Frame of Reference and the very instances it covers, so a part that grew (a late
    slice, a file fixed after a failure) is a new object, not one a rerun skips."""
    first = sources[0]
    members = hashlib.sha256("|".join(sorted(str(s.SOPInstanceUID) for s in sources))
                             .encode()).hexdigest()
    key = (f"{first.get('SeriesInstanceUID', '')}|{first.get('FrameOfReferenceUID', '')}|"
           f"{members}")
    return {"seg": (derived_uid("series", key, fingerprint), derived_uid("seg", key, fingerprint)),
            "sr": (derived_uid("sr-series", key, fingerprint), derived_uid("sr", key, fingerprint))}


def targets_of(out_dir: Path, sources: Sequence[Dataset], part: int, fingerprint: str,
               annotate: bool) -> dict[str, tuple[Path, str]]:
    """Where the part's objects go, with their SOP Instance UIDs."""
    uids = object_uids(sources, fingerprint)
    out = {"seg": (out_dir / uids["seg"][0] / f"SEG{part:02d}.dcm", uids["seg"][1])}
    if annotate:
        out["sr"] = (out_dir / uids["sr"][0] / f"SR{part:02d}.dcm", uids["sr"][1])
    return out


def pixel_mm(ds: Dataset) -> tuple[float, float]:
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        return float(spacing[0]), float(spacing[1])
    except (TypeError, ValueError, IndexError):
        return float("nan"), float("nan")


def seg_dataset(pipeline: Segmenter, group: Sequence[Slice], settings: Settings,
                fingerprint: str, part: int) -> Dataset:
    from scanside import __version__

    from .seg import segmentation

    first = group[0].dataset
    masks = np.stack([s.probability if settings.fractional else s.mask for s in group])
    masks = masks[..., None]  # one segment: the engine's one label
    series_uid, instance_uid = object_uids([s.dataset for s in group], fingerprint)["seg"]
    return segmentation(
        [s.dataset for s in group], masks, labels_of(pipeline),
        series_uid=series_uid, instance_uid=instance_uid,
        series_number=series_number(first) + SEG_OFFSET,
        description=f"scanside: {pipeline.manifest.labels[0]['name']}"[:64],
        model_name=model_name(pipeline), algorithm_version=__version__,
        fractional=settings.fractional)


def sr_dataset(pipeline: Segmenter, group: Sequence[Slice], seg: Dataset, fingerprint: str,
               part: int) -> Dataset:
    from scanside import __version__

    from .sr import Finding, measurement_report

    findings, number = [], 0
    for index, item in enumerate(group):
        mm = pixel_mm(item.dataset)
        for candidate in item.candidates:
            number += 1
            findings.append(Finding(number, index, candidate.center_rc, candidate.radius_px,
                                    round(candidate.area_mm2(mm), 2),
                                    round(candidate.diameter_mm(mm), 2),
                                    round(candidate.mean, 1), round(candidate.contrast, 1)))
    first = group[0].dataset
    series_uid, instance_uid = object_uids([s.dataset for s in group], fingerprint)["sr"]
    return measurement_report(
        [s.dataset for s in group], findings, segmentation=seg,
        series_uid=series_uid, instance_uid=instance_uid,
        series_number=series_number(first) + SR_OFFSET, model_name=model_name(pipeline),
        algorithm_version=__version__, statement=RESEARCH_AID)


def write_preview(path: Path, item: Slice, overwrite: bool) -> None:
    """The slice in its window with the mask's outline in red and candidate numbers' boxes."""
    from PIL import Image
    from scipy import ndimage

    gray = (item.window.to_unit(item.values) * 255).round().astype(np.uint8)
    rgb = np.stack([gray] * 3, axis=-1)
    edge = item.mask & ~ndimage.binary_erosion(item.mask)
    rgb[edge] = (255, 40, 40)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def segment_series(paths: Sequence[Path], pipeline: Segmenter, out_dir: Path, *,
                   sampling: Optional[Sampling] = None, seeds: Optional[int] = None,
                   threshold: Optional[float] = None, window: Optional[Window] = None,
                   fractional: bool = False, annotate: bool = False, preview: bool = False,
                   overwrite: bool = False, progress: bool = True,
                   modalities: Sequence[str] = ()) -> Report:
    """Segment every image series under ``paths`` into DICOM SEG (and, with ``annotate``,
    an SR of the candidates) under ``out_dir``: see the module. ``modalities``: refuse other
    images (the built-in lesion model reads CT only)."""
    out_dir = Path(out_dir)
    settings = Settings(Sampling.of(sampling), seeds, threshold, window, fractional, annotate,
                        preview, overwrite, tuple(modalities))
    with opened_batch(paths, out_dir) as (collected, report):
        fingerprint = run_fingerprint(pipeline, settings)
        for number, series in enumerate(collected.series, 1):
            headers = [i.header for i in series.instances]
            for part, picks in enumerate(by_frame_of_reference(headers), 1):
                segment_part(pipeline, [series.instances[i] for i in picks], part, settings,
                             fingerprint, out_dir, report,
                             f"series {number}/{len(collected.series)}", progress)
    return report


def segment_part(pipeline: Segmenter, instances: list[Instance], part: int,
                 settings: Settings, fingerprint: str, out_dir: Path, report: Report,
                 label: str, progress: bool) -> None:
    """One series' instances of one Frame of Reference: segmented and written, unless an
    earlier run wrote its objects (then the model does not run again)."""
    headers = [i.header for i in instances]
    targets = targets_of(out_dir, headers, part, fingerprint, settings.annotate)
    previews = [targets["seg"][0].parent / preview_name(n) for n in range(1, len(instances) + 1)]
    if all(path.exists() and stored_uid(path) == uid for path, uid in targets.values()) and (
            not settings.preview or all(p.exists() for p in previews)):
        report.skipped += [path for path, _ in targets.values()]
        return
    problem = part_problem(headers, settings)
    if problem:  # before the model runs: nothing it could compute would be written
        report.failures += [(i.path, f"{i.path}: {problem}") for i in instances]
        return
    slices: list[Slice] = []
    with tqdm(total=len(instances), unit="file", disable=not progress, desc=label) as bar:
        for instance in instances:
            with one_file(instance.path, report):
                slices.append(segment_slice(pipeline, instance, settings))
            bar.update()
    if not slices:
        return
    if len(slices) < len(instances):  # some failed: the objects cover the others only
        targets = targets_of(out_dir, [x.dataset for x in slices], part, fingerprint,
                             settings.annotate)
    with one_file(slices[0].instance.path, report):
        seg = seg_dataset(pipeline, slices, settings, fingerprint, part)
        objects = [(targets["seg"][0], seg)]
        if settings.annotate:
            objects.append((targets["sr"][0], sr_dataset(pipeline, slices, seg, fingerprint,
                                                         part)))
        for target, ds in objects:
            write_object(target, ds, slices[0].instance.path, settings.overwrite, report)
        if settings.preview:  # named by position: two sources may share a file name
            for item in slices:
                number = instances.index(item.instance) + 1
                write_preview(targets["seg"][0].parent / preview_name(number), item, True)
        report.images += len(slices)
        marks = sum(len(item.candidates) for item in slices)
        report.counts.append({"series": seg.SeriesInstanceUID[-12:], "slices": len(slices),
                              "flagged_pixels": int(sum(int(x.mask.sum()) for x in slices)),
                              **({"candidates": marks} if settings.annotate else {})})


def preview_name(number: int) -> str:
    return f"IM{number:05d}.png"


def part_problem(headers: Sequence[Dataset], settings: Settings) -> str:
    """Why a part cannot become one SEG (checked on the headers, before the model runs)."""
    if not str(headers[0].get("FrameOfReferenceUID", "") or ""):
        return ("no Frame of Reference UID, which a DICOM SEG needs to place its frames; "
                "segment images that carry one")
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) > 1:
        return (f"images of {len(sizes)} sizes in one series and Frame of Reference "
                f"({', '.join(f'{r}x{c}' for r, c in sorted(sizes))}); one SEG covers one size: "
                "give them as separate series")
    if settings.annotate and not all(pixel_mm(h)[0] > 0 for h in headers):
        return ("no Pixel Spacing, and the report measures candidates in mm; annotate images "
                "that carry it (or run segment, which measures nothing)")
    return ""


def write_object(target: Path, ds: Dataset, source: Path, overwrite: bool,
                 report: Report) -> None:
    """``ds`` at ``target`` unless an earlier run wrote it (same SOP Instance UID); another
    file there is refused unless ``overwrite``."""
    if target.exists():
        if stored_uid(target) == str(ds.SOPInstanceUID):
            report.skipped.append(target)
            return
        if not overwrite:
            raise InputError(f"{target}: already exists and holds another object; remove it, "
                             "choose another output folder, or pass --overwrite")
    data = encode(ds, source)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(data, target, overwrite=True)
    except OSError as exc:
        raise OutputError(f"out_dir: cannot write {target} ({exc.strerror or exc}); free space "
                          "or fix the folder's permissions and run the same command again") from None
    report.written.append(target)
