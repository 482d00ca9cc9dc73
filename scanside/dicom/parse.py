"""Reading a DICOM file that may be damaged or hostile, without a traceback and without
trusting its declared sizes.

A scanner or a network can send anything: flipped bytes, truncated files, impossible Rows or
NumberOfFrames, numbers that are not numbers. pydicom reads lazily (a value is converted when
first touched) and raises many exception types from deep inside, so ``load`` converts every
element at once, inside one boundary, and turns each failure into an ``InputError`` that
names the file and the element. Rules:

* a standard element that cannot be decoded refuses the file, naming the tag (and its value
  when the value cannot identify a patient: numbers, codes, UIDs);
* a private element (odd group) that cannot be decoded is dropped: it is a vendor's note that
  scanside neither reads nor may copy in a broken form; the window attributes, a display hint
  with a safe default, are dropped likewise (``Dropped`` says which, once per file);
* declared sizes are checked against the file before any pixel data is read or allocated.

pydicom's own warnings and log records quote element values, so they are silenced here.
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from scanside.errors import InputError

log = logging.getLogger(__name__)

# One decoded instance may be this large; larger declared sizes are refused before decoding.
MAX_DECODED_BYTES = 4 << 30
# An encapsulated frame is at least one item header (tag and length: 8 bytes).
ITEM_BYTES = 8
# Display hints with a documented fallback (the window: see scanside.dicom.window).
DROPPABLE = frozenset({"WindowCenter", "WindowWidth", "WindowCenterWidthExplanation",
                       "VOILUTFunction"})
# Value representations whose values cannot identify a patient: shown in messages.
SHOWN_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "CS", "UI", "AT"})


@dataclass(frozen=True)
class Dropped:
    """Elements left out of a file because they could not be decoded."""

    names: tuple[str, ...]


def element_name(tag: Any) -> str:
    tag = pydicom.tag.Tag(tag)
    keyword = pydicom.datadict.keyword_for_tag(tag) if not tag.is_private else ""
    return f"{keyword} {tag}" if keyword else f"private element {tag}"


def shown_value(ds: Dataset, tag: Any) -> str:
    """The raw value, for a standard element of a harmless VR only; else ''."""
    tag = pydicom.tag.Tag(tag)
    try:
        raw = ds.get_item(tag)
        vr = str(raw.VR) if raw.VR else pydicom.datadict.dictionary_VR(tag)
        value = raw.value
    except Exception:  # noqa: BLE001 - only decoration for a message being built
        return ""
    if tag.is_private or vr not in SHOWN_VRS or not isinstance(value, (bytes, str)):
        return ""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return f" {text[:40]!r}" + ("..." if len(text) > 40 else "")


# The libraries whose log records may quote element values or UIDs: pydicom, and highdicom
# (scanside/dicom/pmap, seg, sr), which logs a source's SOP Instance UID at INFO.
QUIET_LOGGERS = ("pydicom", "highdicom")


class _Quiet:
    """Shared by every thread: the first to enter silences QUIET_LOGGERS and warnings, the
    last to leave restores them. Saving and restoring per block (``warnings.catch_warnings`` alone) is not thread-safe:
    with slices read in parallel one block's exit would reopen the warnings while another
    thread is still parsing, and a pydicom warning may quote an element's value."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.levels: dict[str, int] = {}
        self.caught: Optional[warnings.catch_warnings] = None

    def enter(self) -> None:
        with self.lock:
            if self.depth == 0:
                for name in QUIET_LOGGERS:
                    logger = logging.getLogger(name)
                    self.levels[name] = logger.level
                    logger.setLevel(logging.CRITICAL)
                self.caught = warnings.catch_warnings()
                self.caught.__enter__()
                warnings.simplefilter("ignore")
            self.depth += 1

    def leave(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                assert self.caught is not None
                self.caught.__exit__(None, None, None)
                self.caught = None
                for name, level in self.levels.items():
                    logging.getLogger(name).setLevel(level)


_quiet = _Quiet()


@contextmanager
def quiet() -> Iterator[None]:
    """pydicom's and highdicom's warnings and log records may quote element values or UIDs:
    keep them out of logs (from every thread, while any thread is inside)."""
    _quiet.enter()
    try:
        yield
    finally:
        _quiet.leave()


def check_vr(elem: Any) -> None:
    """A standard element must carry one of its dictionary VRs (or UN): a flipped VR byte
    makes pydicom read 'NO' as a number or a UID as a list of integers."""
    if elem.tag.is_private or elem.VR == "UN":
        return
    try:
        allowed = pydicom.datadict.dictionary_VR(elem.tag)
    except KeyError:  # not in the dictionary: nothing to check against
        return
    if str(elem.VR) not in allowed.split(" or "):
        raise ValueError(f"VR {elem.VR}, the standard says {allowed}")


def check_numeric_strings(elem: Any) -> None:
    """pydicom keeps a malformed IS/DS value as a plain string (with a warning); here it is an
    error like any other undecodable value."""
    if elem.VR in ("IS", "DS"):
        for value in as_list(elem.value):
            if isinstance(value, str) and value.strip():
                raise ValueError(f"not a {elem.VR} number")


def decode_all(ds: Dataset, path: Path, where: str = "") -> list[str]:
    """Convert every element (sequences recursively); returns the names of those dropped."""
    dropped: list[str] = []
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
            check_vr(elem)
            check_numeric_strings(elem)
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value):
                    dropped += decode_all(item, path, f"{where}{element_name(tag)}[{i}] > ")
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - the hostile-input boundary, see the module doc
            name = element_name(tag)
            if pydicom.tag.Tag(tag).is_private or name.split()[0] in DROPPABLE:
                del ds[tag]
                dropped.append(where + name)
                continue
            raise InputError(f"{path}: {where}{name}{shown_value(ds, tag)} cannot be decoded "
                             f"({type(exc).__name__}); the file is damaged — re-export it from "
                             "the scanner or PACS") from None
    return dropped


def load(path: Path, *, pixels: bool) -> tuple[Dataset, Dropped]:
    """Read ``path`` (with or without pixel data), every element decoded and checked."""
    path = Path(path)
    try:
        with quiet():
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
            check_transfer_syntax(ds, path)
            dropped = decode_all(ds.file_meta, path) + decode_all(ds, path)
    except InputError:
        raise
    except InvalidDicomError:
        raise InputError(f"{path}: not a DICOM file (no DICM preamble); give DICOM files "
                         "or folders of them") from None
    except PermissionError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    except MemoryError:
        raise InputError(f"{path}: declares elements too large to read; the file is damaged")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise InputError(f"{path}: unreadable or truncated DICOM ({type(exc).__name__}); "
                         "re-export it from the scanner or PACS") from None
    if dropped:
        log.warning("%s: left out %d element(s) that cannot be decoded: %s", path, len(dropped),
                    ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))
    return ds, Dropped(tuple(dropped))


def check_transfer_syntax(ds: Dataset, path: Path) -> None:
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and not UID(str(syntax)).is_transfer_syntax:
        raise InputError(f"{path}: TransferSyntaxUID (0002,0010) {str(syntax)[:64]!r} is not a "
                         "transfer syntax; the file's meta header is damaged — re-export it")


def compressed(ds: Dataset) -> bool:
    """True if the pixel data is encapsulated (a checked, known compressed syntax)."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return syntax is not None and UID(str(syntax)).is_transfer_syntax and UID(str(syntax)).is_compressed


# -- numbers -------------------------------------------------------------------------------
def number(ds: Dataset, keyword: str, path: Path, *, default: Optional[float] = None,
           index: Optional[int] = None) -> float:
    """A finite number from a DS/IS/US/... element: its single value, or value ``index`` of a
    multi-valued one; a missing or empty element gives ``default``, or is refused when there
    is none."""
    values = as_list(ds.get(keyword))
    name = element_name(pydicom.datadict.tag_for_keyword(keyword))
    if not values:
        if default is None:
            raise InputError(f"{path}: {name} is missing; the file is not a complete image")
        return default
    if index is None and len(values) > 1:
        raise InputError(f"{path}: {name} has {len(values)} values, one expected; fix or "
                         "re-export the file")
    index = index or 0
    if index >= len(values):
        raise InputError(f"{path}: {name} has {len(values)} value(s), at least {index + 1} "
                         "expected; fix or re-export the file")
    try:
        result = float(values[index])
    except (TypeError, ValueError, OverflowError):
        result = math.nan
    if not math.isfinite(result):
        raise InputError(f"{path}: {name} is {str(values[index])[:40]!r}, not a finite number; "
                         "fix or re-export the file")
    return result


def as_list(value: Any) -> list:
    """An element's value as a list: [] for absent or empty, one item for single values."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return [value]
    return list(value)


def integer(ds: Dataset, keyword: str, path: Path, *, default: Optional[int] = None,
            low: int = 0, high: int = 2**31 - 1) -> int:
    """A whole number in [low, high] from an IS/US/... element."""
    value = number(ds, keyword, path, default=None if default is None else float(default))
    if value != int(value) or not low <= value <= high:
        raise InputError(f"{path}: {element_name(pydicom.datadict.tag_for_keyword(keyword))} is "
                         f"{value:g}; expected a whole number in [{low}, {high}] — the file is "
                         "damaged or not an image scanside can read")
    return int(value)


def vector(ds: Dataset, keyword: str, path: Path, count: int) -> Optional[list[float]]:
    """``count`` finite numbers (Image Position/Orientation, Pixel Spacing), or None if absent."""
    values = as_list(ds.get(keyword))
    if not values:
        return None
    if len(values) != count:
        raise InputError(f"{path}: {element_name(pydicom.datadict.tag_for_keyword(keyword))} has "
                         f"{len(values)} value(s), {count} expected; fix or re-export the file")
    return [number(ds, keyword, path, index=i) for i in range(count)]


def check_sizes(ds: Dataset, path: Path, file_size: int) -> None:
    """Declared image size against the limit and the file, before any pixel data is read."""
    rows = integer(ds, "Rows", path, low=1, high=65535)
    columns = integer(ds, "Columns", path, low=1, high=65535)
    frames = integer(ds, "NumberOfFrames", path, default=1, low=1)
    bits = integer(ds, "BitsAllocated", path, low=1, high=64)
    samples = integer(ds, "SamplesPerPixel", path, default=1, low=1, high=4)
    declared = rows * columns * frames * samples * bits // 8
    if declared > MAX_DECODED_BYTES:
        raise InputError(f"{path}: declares {frames} frame(s) of {rows}x{columns} at {bits} bits "
                         f"({declared / 2**30:.1f} GiB decoded); scanside decodes up to "
                         f"{MAX_DECODED_BYTES / 2**30:.0f} GiB per instance — split the object")
    size = file_size
    if compressed(ds):
        if frames > size // ITEM_BYTES:
            raise InputError(f"{path}: declares {frames} compressed frames in a {size}-byte file; "
                             "NumberOfFrames is damaged")
    elif declared > size:
        raise InputError(f"{path}: declares {declared} bytes of pixel data ({frames} x {rows}x"
                         f"{columns} x {bits} bits) but the file has {size} bytes: truncated, or "
                         "Rows/Columns/NumberOfFrames are damaged")


# Syntaxes whose frames start with a JPEG (ITU T.81 / T.87) header pydicom can parse.
JPEG_FAMILY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
               "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}


JPEG_2000 = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
             "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
SIZ = b"\xff\x4f\xff\x51"  # SOC marker, then SIZ: the image and tile size (ISO 15444-1 A.5.1)


def j2k_size(frame: bytes) -> tuple[Optional[int], Optional[int], Optional[int]]:
    """(height, width, components) from a JPEG 2000 frame's SIZ segment; Nones if absent."""
    at = frame.find(SIZ, 0, 4096)  # at the start of a raw codestream, after the boxes of JP2
    if at < 0 or len(frame) < at + 42:
        return None, None, None
    xsiz, ysiz, xo, yo, xt, yt, xto, yto = struct.unpack(">8I", frame[at + 8:at + 40])
    (csiz,) = struct.unpack(">H", frame[at + 40:at + 42])
    # Tile indices are 16-bit (Isot): more than 65535 tiles is no codestream, only a decoder
    # busy for minutes; report it as a size that cannot match.
    if not xt or not yt or math.ceil((xsiz - xto) / xt) * math.ceil((ysiz - yto) / yt) > 65535:
        return None, None, csiz
    return ysiz - yo, xsiz - xo, csiz


def check_codestream(frame: bytes, ds: Dataset, path: Path, index: int) -> None:
    """A JPEG, JPEG-LS or JPEG 2000 frame's own header must agree with Rows, Columns and
    SamplesPerPixel. The native decoders trust the codestream: on a mismatch CharLS and GDCM
    abort the whole process, and OpenJPEG allocates whatever size the damaged header says
    (6 GB for one flipped bit in the fuzz run), so it is checked before they see the frame."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax in JPEG_2000:
        found = j2k_size(frame)
        what = "JPEG 2000 SIZ segment"
    elif syntax in JPEG_FAMILY:
        try:  # pydicom's own JPEG header parser (private in 3.0; absent -> no check)
            from pydicom.pixels.utils import _get_jpg_parameters
        except ImportError:
            return
        header = _get_jpg_parameters(frame)
        found = (header.get("height"), header.get("width"), header.get("components"))
        what = "JPEG header"
    else:
        return
    expected = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1) or 1))
    if found != expected:
        raise InputError(f"{path}: frame {index + 1}'s {what} says {found[0]}x{found[1]} "
                         f"with {found[2]} component(s), the DICOM header {expected[0]}x"
                         f"{expected[1]} with {expected[2]}; the file is damaged — re-export it")


def check_pixel_length(ds: Dataset, path: Path) -> None:
    """Native pixel data must hold what Rows x Columns x frames x bits say (odd padding and
    less than one row of excess are tolerated, as pydicom does)."""
    if compressed(ds):
        return
    if not isinstance(ds.get("PixelData"), (bytes, bytearray)):
        raise InputError(f"{path}: the Pixel Data element is empty or not bytes (its VR is "
                         f"{str(ds['PixelData'].VR)[:4]!r}); the file is damaged — re-export it")
    rows, columns = int(ds.Rows), int(ds.Columns)
    frames = integer(ds, "NumberOfFrames", path, default=1, low=1)
    row_bytes = columns * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated) // 8
    expected, actual = rows * row_bytes * frames, len(ds.PixelData)
    if actual < expected:
        raise InputError(f"{path}: pixel data has {actual} bytes, {frames} frame(s) of "
                         f"{rows}x{columns} need {expected}: the file is truncated or its image "
                         "attributes are damaged — re-export it")
    if actual - expected >= max(row_bytes, 2):
        raise InputError(f"{path}: pixel data has {actual} bytes, {actual - expected} more than "
                         f"{frames} frame(s) of {rows}x{columns} hold: Rows/Columns/"
                         "NumberOfFrames do not describe it — the file is damaged")
