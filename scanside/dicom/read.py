"""Reading DICOM: files, folders and series, with the values the scanner meant.

Headers are read first (no pixel data) to validate, group by SeriesInstanceUID and order the
slices; pixels are decoded one file at a time later. Messages name the file and the reason,
never a patient attribute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import pixel_array
from pydicom.uid import UID, MediaStorageDirectoryStorage

from scanside.errors import InputError

from . import parse
from .codecs import check_decodable

log = logging.getLogger(__name__)
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class Instance:
    """One DICOM file's header, validated; pixels are read by ``read_values``."""

    path: Path
    header: Dataset

    @property
    def series_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", "")) or f"no-series:{self.path}"

    @property
    def frames(self) -> int:
        return frame_count(self.header)


@dataclass
class Series:
    uid: str
    instances: list[Instance] = field(default_factory=list)


@dataclass
class Collected:
    series: list[Series]
    failures: list[tuple[Path, str]]


def read_header(path: Path) -> Instance:
    """Read and validate one file's header; raise InputError naming the file and the reason."""
    path = Path(path)
    ds, _ = parse.load(path, pixels=False)
    check_header(path, ds)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    parse.check_sizes(ds, path, size)
    return Instance(path, ds)


def check_header(path: Path, ds: Dataset) -> None:
    """Everything the enhancement decides from: refused here, by name, before any pixel work."""
    sop_class = ds.file_meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID"))
    if sop_class == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise InputError(f"{path}: a DICOMDIR (media index), not an image; give the image "
                         "files or their folder instead")
    if "Rows" not in ds or "Columns" not in ds:
        raise InputError(f"{path}: no pixel data or image attributes (SOP class "
                         f"{uid_name(sop_class)}): not an image, or the file is truncated; only "
                         "images can be enhanced")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not str(ds.get(keyword, "") or "").strip():
            raise InputError(f"{path}: {keyword} is missing; a derived instance must reference "
                             "its source — the file is damaged")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    samples = parse.integer(ds, "SamplesPerPixel", path, default=1, low=1, high=4)
    if samples != 1 or photometric not in MONOCHROME:
        raise InputError(f"{path}: {photometric[:16] or 'colour'} image; scanside's models are "
                         "grayscale (MONOCHROME1/2) — colour images are not supported")
    bits = parse.integer(ds, "BitsAllocated", path, low=1, high=64)
    if bits not in (8, 16):
        raise InputError(f"{path}: BitsAllocated {bits}; scanside writes 8- and 16-bit images only")
    stored = parse.integer(ds, "BitsStored", path, default=bits, low=1, high=bits)
    parse.integer(ds, "HighBit", path, default=stored - 1, low=stored - 1, high=bits - 1)
    parse.integer(ds, "PixelRepresentation", path, default=0, low=0, high=1)
    parse.integer(ds, "Rows", path, low=1, high=65535)
    parse.integer(ds, "Columns", path, low=1, high=65535)
    frames = parse.integer(ds, "NumberOfFrames", path, default=1, low=1)
    if "ModalityLUTSequence" in ds:
        raise InputError(f"{path}: uses a Modality LUT Sequence (a non-linear value map) that "
                         "scanside cannot invert when writing; not supported")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != frames:
        raise InputError(f"{path}: NumberOfFrames is {frames} but the Per-frame Functional "
                         f"Groups Sequence has {len(per_frame)} item(s); the file is damaged")
    for frame in range(len(per_frame) if per_frame is not None else 1):
        slope, _ = rescale(ds, frame, path)
        if slope == 0:
            raise InputError(f"{path}: RescaleSlope (0028,1053) is 0, which maps every pixel to "
                             "one value; the file is damaged")
    # Geometry that orders the series: refused here rather than mis-sorted later.
    parse.vector(ds, "ImagePositionPatient", path, 3)
    parse.vector(ds, "ImageOrientationPatient", path, 6)
    parse.vector(ds, "PixelSpacing", path, 2)
    parse.number(ds, "InstanceNumber", path, default=0.0)
    check_decodable(ds.file_meta.get("TransferSyntaxUID"), str(path))


def uid_name(uid: object) -> str:
    """A UID for a message: its name if pydicom knows it, the UID if well formed, else a
    placeholder (a damaged value can hold any bytes of the file)."""
    text = str(uid or "")
    if not text or len(text) > 64 or not UID(text).is_valid:
        return "unreadable"
    return UID(text).name


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def frame_groups(ds: Dataset, frame: int) -> list[Dataset]:
    """The functional group items that apply to ``frame``: its own first, then the shared."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    return groups


def rescale(ds: Dataset, frame: int, path: Path) -> tuple[float, float]:
    """(slope, intercept) of ``frame``: an enhanced object's Pixel Value Transformation
    functional group (PS3.3 C.7.6.16.2.9), else the top-level Rescale attributes, else
    identity."""
    for group in frame_groups(ds, frame):
        items = group.get("PixelValueTransformationSequence")
        if items:
            return (parse.number(items[0], "RescaleSlope", path, default=1.0),
                    parse.number(items[0], "RescaleIntercept", path, default=0.0))
    return (parse.number(ds, "RescaleSlope", path, default=1.0),
            parse.number(ds, "RescaleIntercept", path, default=0.0))


def expand(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files as given, folders walked recursively (hidden files and DICOMDIRs skipped)."""
    files, failures = [], []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and p.name.upper() != "DICOMDIR")
            if not found:
                failures.append((path, f"{path}: folder holds no files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            failures.append((path, f"{path}: no such file or folder"))
    return files, failures


def slice_position(instance: Instance) -> tuple:
    """Sort key: distance along the slice normal, else InstanceNumber, else file name (the
    values were checked by check_header)."""
    h, path = instance.header, instance.path
    ipp = parse.vector(h, "ImagePositionPatient", path, 3)
    iop = parse.vector(h, "ImageOrientationPatient", path, 6)
    if ipp is not None and iop is not None:
        normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
        return (0, float(np.dot(normal, np.asarray(ipp))), str(path))
    return (1, parse.number(h, "InstanceNumber", path, default=0.0), str(path))


def collect(paths: Iterable[Path]) -> Collected:
    """Validate every file's header and group the good ones into ordered series."""
    files, failures = expand(paths)
    by_uid: dict[str, Series] = {}
    for path in files:
        try:
            instance = read_header(path)
        except InputError as exc:
            failures.append((path, str(exc)))
            continue
        by_uid.setdefault(instance.series_uid, Series(instance.series_uid)).instances.append(instance)
    for series in by_uid.values():
        series.instances.sort(key=slice_position)
    return Collected(list(by_uid.values()), failures)


def read_pixels(instance: Instance) -> Dataset:
    """The full dataset, its pixel data checked against the declared size (not yet decoded)."""
    path = instance.path
    ds, _ = parse.load(path, pixels=True)
    check_header(path, ds)
    if ds.get("PixelData") is None:
        raise InputError(f"{path}: no pixel data; only images can be enhanced")
    parse.check_pixel_length(ds, path)
    return ds


def frame_values(ds: Dataset, frame: int, path: Path) -> np.ndarray:
    """One frame's modality values ((H, W) float64: HU for CT); decoding one frame at a time
    bounds the memory of multi-frame objects."""
    try:
        with parse.quiet():
            if parse.compressed(ds):
                encoded = get_frame(ds.PixelData, frame, number_of_frames=frame_count(ds))
                parse.check_codestream(encoded, ds, path, frame)
            stored = pixel_array(ds, index=frame)
    except RuntimeError as exc:  # every installed decoder plugin refused this encoding
        reasons = " ".join(str(exc).split())[:300]
        raise InputError(f"{path}: pixel data could not be decoded: {reasons}. For 12-bit JPEG "
                         "the GPL-3 plugin pylibjpeg-libjpeg is the only decoder; or convert "
                         "the file to an uncompressed syntax") from None
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: frame {frame + 1} does not fit in memory") from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise many types on damaged data,
        # including Rust panics from the pylibjpeg plugins, which are not Exceptions
        raise InputError(f"{path}: pixel data of frame {frame + 1} could not be decoded "
                         f"({type(exc).__name__}); the file is probably truncated or damaged — "
                         "re-export it") from None
    if stored.shape != (int(ds.Rows), int(ds.Columns)):
        raise InputError(f"{path}: frame {frame + 1} decoded to {stored.shape}, the header says "
                         f"{ds.Rows}x{ds.Columns}; the file is damaged")
    slope, intercept = rescale(ds, frame, path)
    return stored.astype(np.float64) * slope + intercept


def read_values(instance: Instance) -> tuple[Dataset, np.ndarray]:
    """(full dataset, (frames, H, W) float64 modality values): every frame at once, for
    callers that want them; enhancement goes frame by frame (``frame_values``)."""
    ds = read_pixels(instance)
    return ds, np.stack([frame_values(ds, f, instance.path) for f in range(frame_count(ds))])


def stored_range(ds: Dataset) -> tuple[int, int]:
    """The values BitsStored and PixelRepresentation allow."""
    bits = int(ds.get("BitsStored", ds.BitsAllocated))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def to_stored(values: np.ndarray, ds: Dataset, frame: int = 0) -> np.ndarray:
    """Inverse of ``frame``'s modality rescale, rounded and clipped to the stored range, in
    the source's dtype."""
    slope, intercept = rescale(ds, frame, Path("<dataset>"))
    lo, hi = stored_range(ds)
    stored = np.clip(np.round((values - intercept) / slope), lo, hi)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    dtype = {8: (np.uint8, np.int8), 16: (np.uint16, np.int16)}[int(ds.BitsAllocated)][signed]
    return stored.astype(dtype)
