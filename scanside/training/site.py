"""A site's own CT, read for `scanside models evaluate --on` and `scanside models adapt`.

The inputs are routine-dose series from the site's scanners: DICOM files or folders (any
vendor, any pixel size, single- or multi-frame) and, for research users, NIfTI volumes (one
volume, one series; values in HU). Each usable slice becomes an HU image with its pixel size,
the two things the scan chain (``ctsim``) needs. What cannot be used is left out with the
reason, never silently:

- not CT (Modality), a localizer or scout (ImageType LOCALIZER), a derived image (ImageType
  DERIVED: a reformat or processed series, and scanside's own output, which also carries
  scanside in its Contributing Equipment): the model would learn someone's processing, not
  the scanner;
- no pixel spacing, or pixels that are not square: the scan chain works at the slice's size;
- anything the DICOM reader refuses (damaged, colour, unsupported encoding), named by it;
- a NIfTI volume that is not 3-D or whose values are not HU.

A series of a single slice is data like any other. Series are named by their position and a
short hash of the pixel values read (``s01-3fa2c18b``): stable between runs on the same
data, and linkable to a series only by someone who holds its images (a hash of a UID would
be linkable by anyone with the PACS's index). Nothing here writes or prints a patient
attribute or a UID; the facts kept per series are those a model card may show
(manufacturer, scanner model, kernel, kV, pixel size, matrix and slice thickness). Input
files are only read.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from scanside.errors import InputError

log = logging.getLogger(__name__)
CLIP_HU = (-1000.0, 3000.0)  # padding outside the field of view (-2048, -3024) becomes air
NIFTI = (".nii", ".nii.gz")
# CT Image, Enhanced CT Image, Legacy Converted Enhanced CT Image Storage.
CT_IMAGES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1",
             "1.2.840.10008.5.1.4.1.1.2.2")
SQUARE_TOLERANCE = 0.01  # row and column spacing may differ by 1 % (rounding in headers)
HASH_SALT = b"scanside-site-series:"


@dataclass(frozen=True)
class SiteSlice:
    hu: np.ndarray  # (H, W) float32 HU, clipped to CLIP_HU
    pixel_mm: float
    position: int  # index within its series, in slice order


@dataclass
class SiteSeries:
    index: int  # 1-based, in the order the series were found
    key: str  # short hash of the pixels read (see the module docstring)
    length: int  # slices the series has (``slices`` may hold a spread of them)
    facts: dict[str, Any]
    slices: list[SiteSlice] = field(default_factory=list)
    # Which acquisition the series belongs to, so two reconstructions of one study (soft and
    # bone kernels, thin and thick slices) fall on one side of a split: held in memory only,
    # never written (a hash of the StudyInstanceUID; a NIfTI file is its own group).
    group: str = field(default="", repr=False)

    @property
    def name(self) -> str:
        return f"s{self.index:02d}-{self.key}"


@dataclass(frozen=True)
class LeftOut:
    argument: int  # which SCANS argument (1-based)
    path: str  # the file as found; shown on the terminal, never written to a report
    reason: str


@dataclass
class SiteScans:
    series: list[SiteSeries]
    left_out: list[LeftOut]

    @property
    def slice_count(self) -> int:
        return sum(len(s.slices) for s in self.series)

    def summary(self) -> dict[str, Any]:
        """What the data is, without identifiers: counts, scanners, kernels, kV, sizes."""
        def values(key: str) -> list:
            return sorted({str(s.facts[key]) for s in self.series
                           if s.facts.get(key) not in (None, "")})
        pixel = [s.facts["pixel_mm"] for s in self.series]
        return {"series": len(self.series), "slices": self.slice_count,
                "slices_in_series": sum(s.length for s in self.series),
                "manufacturers": values("manufacturer"), "scanner_models": values("model"),
                "kernels": values("kernel"), "kvp": values("kvp"),
                "pixel_mm": [round(min(pixel), 3), round(max(pixel), 3)] if pixel else None,
                "sizes": values("size"), "slice_mm": values("slice_mm"),
                "formats": values("format"),
                "left_out": left_out_counts(self.left_out)}


def left_out_counts(left_out: Sequence[LeftOut]) -> dict[str, int]:
    """Left-out files counted by reason (the reason's text before any file-specific detail)."""
    counts: dict[str, int] = {}
    for item in left_out:
        kind = item.reason.split(":")[0].split(" (")[0]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI)


def text(ds: Any, keyword: str) -> str:
    """A short, printable header value (scanner facts only), '' when absent."""
    value = ds.get(keyword, "")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    value = "".join(c for c in str(value or "") if c.isprintable()).strip()
    return value[:64]


def image_type(ds: Any) -> list[str]:
    value = ds.get("ImageType", [])
    if isinstance(value, str):
        value = value.split("\\")
    return [str(v).strip().upper() for v in value]


def from_scanside(ds: Any) -> bool:
    return any(str(item.get("Manufacturer", "")).strip().lower() == "scanside"
               for item in ds.get("ContributingEquipmentSequence", []) or [])


def pixel_spacing(ds: Any) -> Optional[list[float]]:
    """(row, column) spacing in mm: the top level, else an enhanced object's shared Pixel
    Measures functional group."""
    spacing = ds.get("PixelSpacing")
    if not spacing:
        for group in ds.get("SharedFunctionalGroupsSequence", []) or []:
            for item in group.get("PixelMeasuresSequence", []) or []:
                spacing = item.get("PixelSpacing") or spacing
    if not spacing:
        for group in (ds.get("PerFrameFunctionalGroupsSequence", []) or [])[:1]:
            for item in group.get("PixelMeasuresSequence", []) or []:
                spacing = item.get("PixelSpacing") or spacing
    try:
        values = [float(v) for v in spacing] if spacing else None
    except (TypeError, ValueError):
        return None
    return values if values and len(values) == 2 and min(values) > 0 else None


def unusable(ds: Any) -> Optional[str]:
    """Why a CT header cannot serve as a site's routine scan, or None."""
    modality = text(ds, "Modality")
    if modality != "CT":
        return f"not CT (Modality {modality or 'missing'}): only CT goes through the CT scan chain"
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in CT_IMAGES:
        from scanside.dicom.read import uid_name

        return f"not a CT image (SOP class {uid_name(sop_class)}: a screenshot, dose report " \
               "or other secondary capture)"
    if text(ds, "BurnedInAnnotation").upper() == "YES":
        return "burned-in annotation (BurnedInAnnotation YES): text in the pixels"
    kinds = image_type(ds)
    if "LOCALIZER" in kinds:
        return "a localizer (scout) image, not a cross-section"
    if from_scanside(ds):
        return "scanside's own derived output (Contributing Equipment): enhancing or training " \
               "on it would measure the model against itself"
    if kinds and kinds[0] == "DERIVED":
        return "a derived image (ImageType DERIVED: a reformat or processed series); give the " \
               "scanner's original reconstructions"
    spacing = pixel_spacing(ds)
    if spacing is None:
        return "no pixel spacing (PixelSpacing): the scan chain needs each slice's pixel size"
    if abs(spacing[0] - spacing[1]) > SQUARE_TOLERANCE * max(spacing):
        return f"pixels are not square ({spacing[0]:g} x {spacing[1]:g} mm); the scan chain " \
               "takes square pixels"
    return None


def series_facts(ds: Any, spacing: float, fmt: str) -> dict[str, Any]:
    kvp = text(ds, "KVP")
    try:
        kvp = f"{float(kvp):g}" if kvp else ""
    except ValueError:
        kvp = ""
    return {"format": fmt, "manufacturer": text(ds, "Manufacturer"),
            "model": text(ds, "ManufacturerModelName"), "kernel": text(ds, "ConvolutionKernel"),
            "kvp": kvp, "pixel_mm": round(spacing, 4),
            "size": f"{int(ds.Rows)}x{int(ds.Columns)}",
            "slice_mm": text(ds, "SliceThickness")}


def spread(length: int, count: Optional[int]) -> list[int]:
    """``count`` indices spread evenly over ``range(length)`` (all of them when None)."""
    if count is None or count >= length:
        return list(range(length))
    if count <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, length - 1, max(1, count))})


def shares(lengths: Sequence[int], total: Optional[int]) -> list[Optional[int]]:
    """How many slices of each series to use for at most ``total`` overall: in proportion to
    the series' lengths, at least one each while the budget allows."""
    if total is None or sum(lengths) <= total:
        return [None] * len(lengths)
    if total < len(lengths):  # fewer slices than series: one slice from each of a spread
        chosen = set(spread(len(lengths), total))
        return [1 if i in chosen else 0 for i in range(len(lengths))]
    raw = np.array(lengths, float) * total / sum(lengths)
    out = np.maximum(np.floor(raw).astype(int), 1)
    while out.sum() > total:
        out[int(np.argmax(out))] -= 1
    for i in np.argsort(-(raw - np.floor(raw))):  # largest remainders get what is left
        if out.sum() >= total:
            break
        if out[i] < lengths[i]:
            out[i] += 1
    return [int(n) for n in out]


def key_of(data: bytes) -> str:
    """A short salted hash, for in-memory grouping only (see SiteSeries.group)."""
    return hashlib.sha256(HASH_SALT + data).hexdigest()[:8]


def read_scans(paths: Sequence["str | Path"], max_slices: Optional[int] = None,
               echo: Callable[[str], None] = print) -> SiteScans:
    """The usable series under ``paths`` (files or folders), at most ``max_slices`` slices in
    all (spread evenly over each series, in proportion to their lengths); what was left out
    and why. Raises InputError when nothing usable remains."""
    from scanside.dicom import read

    left: list[LeftOut] = []
    dicom: list[tuple[int, Path]] = []
    volumes: list[tuple[int, Path]] = []
    for argument, path in enumerate(map(Path, paths), 1):
        if not path.exists():
            raise InputError(f"{path}: no such file or folder (SCANS argument {argument})")
        found, _ = read.expand([path])  # a folder walked as enhance walks it
        if not found:
            left.append(LeftOut(argument, str(path), "an empty folder"))
        for file in found:
            (volumes if is_nifti(file) else dicom).append((argument, file))
    argument_of = {file: argument for argument, file in dicom}
    collected = read.collect([file for _, file in dicom])
    for file, reason in collected.failures:
        left.append(LeftOut(argument_of.get(file, 0), str(file), reason_only(reason, file)))
    candidates: list[tuple[str, list, Any]] = []  # (kind, instances or volume, facts source)
    for series in collected.series:
        keep = []
        for instance in series.instances:
            why = unusable(instance.header)
            if why:
                left.append(LeftOut(argument_of.get(instance.path, 0), str(instance.path), why))
            else:
                keep.append(instance)
        if keep:
            candidates.append(("dicom", keep, None))
    for argument, file in volumes:
        try:
            candidates.append(("nifti", [nifti_volume(file)], file))
        except InputError as exc:
            left.append(LeftOut(argument, str(file), reason_only(str(exc), file)))
    lengths = [len(frame_list(c[1])) if c[0] == "dicom" else c[1][0][0].shape[0]
               for c in candidates]
    budget = shares(lengths, max_slices)
    scans = SiteScans([], left)
    for (kind, items, source), length, count in zip(candidates, lengths, budget):
        index = len(scans.series) + 1
        picks = spread(length, count)
        if not picks:
            continue
        if kind == "dicom":
            series = dicom_series(index, items, picks, left, argument_of)
        else:
            volume, spacing = items[0]
            slices = [SiteSlice(np.array(volume[k]), spacing, k) for k in picks]  # copies
            series = SiteSeries(index, pixel_key(slices), length,
                                {"format": "NIfTI", "pixel_mm": round(spacing, 4),
                                 "size": f"{volume.shape[1]}x{volume.shape[2]}"},
                                slices, group=f"nifti:{source}")
        if series.slices:
            scans.series.append(series)
    for item in left:
        echo(f"left out: {item.path}: {item.reason}")
    if not scans.series:
        raise InputError(f"{', '.join(map(str, paths))}: no usable CT slice "
                         f"({len(left)} file(s) left out, reasons above); give routine-dose "
                         "axial CT series (DICOM) or NIfTI volumes in HU")
    echo(f"site scans: {scans.slice_count} slice(s) from {len(scans.series)} series"
         + (f" (at most {max_slices}, spread over each series)" if max_slices else "")
         + (f"; {len(left)} file(s) left out" if left else ""))
    return scans


def reason_only(message: str, path: Path) -> str:
    """A reader's message without the file's path, wherever it stands in it (the terminal
    shows the path apart; reports never do: a path can hold a patient's name)."""
    prefix = f"{path}: "
    message = message[len(prefix):] if message.startswith(prefix) else message
    path = Path(path)
    for form in sorted({str(path), str(path.resolve()), str(path.parent),
                        str(path.resolve().parent), path.name}, key=len, reverse=True):
        message = message.replace(form, "<file>")
    return message


def frame_list(instances: list) -> list[tuple[int, int]]:
    """(instance, frame) of every slice of a series: each frame of a multi-frame instance is
    a slice of its own."""
    from scanside.dicom import read

    return [(i, f) for i, instance in enumerate(instances) for f in range(read.frame_count(instance.header))]


def dicom_series(index: int, instances: list, picks: list[int], left: list[LeftOut],
                 argument_of: dict) -> SiteSeries:
    """The picked slices (indices into ``frame_list``) of one series in HU; a file whose
    pixels cannot be read is left out with the reader's reason."""
    from scanside.dicom import read

    first = instances[0].header
    spacing = float(np.mean(pixel_spacing(first)))
    frames = frame_list(instances)
    series = SiteSeries(index, "", len(frames), series_facts(first, spacing, "DICOM"),
                        group=key_of(str(first.get("StudyInstanceUID", "")).encode()))
    wanted: dict[int, list[tuple[int, int]]] = {}
    for position in picks:
        instance, frame = frames[position]
        wanted.setdefault(instance, []).append((position, frame))
    for k, chosen in wanted.items():
        instance = instances[k]
        try:
            ds = read.read_pixels(instance)
            values = [(position, read.frame_values(ds, frame, instance.path))
                      for position, frame in chosen]
        except InputError as exc:
            left.append(LeftOut(argument_of.get(instance.path, 0), str(instance.path),
                                reason_only(str(exc), instance.path)))
            continue
        own = pixel_spacing(ds) or [spacing, spacing]
        for position, hu in values:
            series.slices.append(SiteSlice(np.clip(hu, *CLIP_HU).astype(np.float32),
                                           float(np.mean(own)), position))
    series.key = pixel_key(series.slices)
    return series


def pixel_key(slices: list[SiteSlice]) -> str:
    digest = hashlib.sha256(HASH_SALT)
    for item in slices:
        digest.update(np.ascontiguousarray(item.hu).tobytes())
    return digest.hexdigest()[:8]


def nifti_volume(path: Path) -> tuple[np.ndarray, float]:
    """(slices, H, W) float32 HU and the in-plane pixel size of a NIfTI CT volume, the slices
    along its third axis; InputError with the reason when it cannot be one."""
    try:
        import nibabel as nib
    except ImportError:
        raise InputError(f"{path}: NIfTI needs nibabel: pip install 'scanside[train]'") from None
    try:
        image = nib.load(str(path))
        data = np.asarray(image.get_fdata(dtype=np.float32))
        zooms = [float(z) for z in image.header.get_zooms()[:2]]
    except Exception as exc:  # nibabel raises many types on damaged files
        # Its type only: nibabel's and gzip's messages quote the file's path, in forms of their
        # own (resolved, truncated), and a path can hold a patient's name.
        raise InputError(f"{path}: not a readable NIfTI volume ({type(exc).__name__}); give "
                         "a .nii or .nii.gz volume") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: a {data.ndim}-D volume; a CT volume is 3-D (x, y, slices)")
    if len(zooms) < 2 or min(zooms) <= 0:
        raise InputError(f"{path}: no pixel size in the header (zooms {zooms})")
    if abs(zooms[0] - zooms[1]) > SQUARE_TOLERANCE * max(zooms):
        raise InputError(f"{path}: pixels are not square ({zooms[0]:g} x {zooms[1]:g} mm); "
                         "the scan chain takes square pixels")
    low, high = float(np.nanmin(data)), float(np.nanmax(data))
    if low > -500 or high < 0:
        raise InputError(f"{path}: values {low:g}..{high:g} do not look like HU (air is "
                         "-1000); give the volume in Hounsfield units")
    slices = np.transpose(np.nan_to_num(data, nan=-1000.0), (2, 1, 0))  # (z, y, x): rows first
    return np.clip(slices, *CLIP_HU).astype(np.float32), float(np.mean(zooms))
