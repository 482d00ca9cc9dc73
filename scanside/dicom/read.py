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
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import MediaStorageDirectoryStorage

from scanside.errors import InputError

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
        return int(self.header.get("NumberOfFrames", 1) or 1)


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
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise InputError(f"{path}: not a DICOM file (no DICM preamble); give DICOM files "
                         "or folders of them") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: unreadable or truncated DICOM ({type(exc).__name__}); "
                         "re-export it from the scanner or PACS") from None
    check_header(path, ds)
    return Instance(path, ds)


def check_header(path: Path, ds: Dataset) -> None:
    sop_class = ds.file_meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID"))
    if sop_class == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise InputError(f"{path}: a DICOMDIR (media index), not an image; give the image "
                         "files or their folder instead")
    if "Rows" not in ds or "Columns" not in ds:
        raise InputError(f"{path}: no pixel data or image attributes (SOP class "
                         f"{getattr(sop_class, 'name', sop_class)}): not an image, or the file "
                         "is truncated; only images can be enhanced")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric not in MONOCHROME:
        raise InputError(f"{path}: {photometric or 'colour'} image; scanside's models are "
                         "grayscale (MONOCHROME1/2) — colour images are not supported")
    if int(ds.get("BitsAllocated", 0)) not in (8, 16):
        raise InputError(f"{path}: BitsAllocated {ds.get('BitsAllocated')}; scanside writes "
                         "8- and 16-bit images only")
    if "ModalityLUTSequence" in ds:
        raise InputError(f"{path}: uses a Modality LUT Sequence (a non-linear value map) that "
                         "scanside cannot invert when writing; not supported")
    check_decodable(ds.file_meta.get("TransferSyntaxUID"), str(path))


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
    """Sort key: distance along the slice normal, else InstanceNumber, else file name."""
    h = instance.header
    ipp, iop = h.get("ImagePositionPatient"), h.get("ImageOrientationPatient")
    if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        return (0, float(np.dot(normal, np.asarray(ipp, float))), str(instance.path))
    number = h.get("InstanceNumber")
    return (1, float(number) if number is not None else 0.0, str(instance.path))


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


def read_values(instance: Instance) -> tuple[Dataset, np.ndarray]:
    """(full dataset, (frames, H, W) float64 modality values: HU for CT)."""
    path = instance.path
    try:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            raise InputError(f"{path}: no pixel data; only images can be enhanced")
        stored = ds.pixel_array
    except RuntimeError as exc:  # every installed decoder plugin refused this encoding
        reasons = " ".join(str(exc).split())
        raise InputError(f"{path}: pixel data could not be decoded: {reasons}. For 12-bit JPEG "
                         "the GPL-3 plugin pylibjpeg-libjpeg is the only decoder; or convert "
                         "the file to an uncompressed syntax") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: pixel data could not be decoded ({type(exc).__name__}); "
                         "the file is probably truncated — re-export it") from None
    stored = stored.reshape(instance.frames, int(ds.Rows), int(ds.Columns))  # (F, H, W)
    return ds, np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)


def stored_range(ds: Dataset) -> tuple[int, int]:
    """The values BitsStored and PixelRepresentation allow."""
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def to_stored(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Inverse modality LUT, rounded and clipped to the stored range, in the source's dtype."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    lo, hi = stored_range(ds)
    stored = np.clip(np.round((values - intercept) / slope), lo, hi)
    signed = int(ds.PixelRepresentation) == 1
    dtype = {8: (np.uint8, np.int8), 16: (np.uint16, np.int16)}[int(ds.BitsAllocated)][signed]
    return stored.astype(dtype)

