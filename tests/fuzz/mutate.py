"""Mutations of real DICOM files, the damage scanners, networks and disks do.

Each mutation takes a file's bytes and a seeded generator and returns damaged bytes and a
one-line description. Byte-level mutations find the elements with pydicom's own element
generator (tag, VR, length and value offsets), so they can hit a length field, a VR or a
value on purpose; the rest flip bits and cut files anywhere.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from pydicom.filereader import data_element_generator

PREAMBLE = 132  # 128-byte preamble + "DICM"
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
            b"UT", b"UV"}
NUMERIC_TAGS = {  # the attributes scanside reads its values and geometry from
    0x00281053: "RescaleSlope", 0x00281052: "RescaleIntercept", 0x00281050: "WindowCenter",
    0x00281051: "WindowWidth", 0x00280030: "PixelSpacing", 0x00200032: "ImagePositionPatient",
    0x00200037: "ImageOrientationPatient", 0x00200013: "InstanceNumber",
    0x00280008: "NumberOfFrames", 0x00180050: "SliceThickness"}
BAD_NUMBERS = [b"-91R2000", b"1.000\x08", b"nan", b"inf", b"-inf", b"1e999", b"", b" ",
               b"\\\\", b"1\\2\\3\\4\\5\\6\\7", b"0", b"-0", b"1" * 70, b"1,5", b"\xff\xfe",
               b"0x10", b"+-1", b"1e-400", b"9" * 16, b"-2147483649", b"\x00\x00"]
ABSURD_US = [0, 1, 2, 3, 7, 9, 15, 17, 24, 32, 64, 255, 256, 4096, 32768, 65535]
ABSURD_IS = [b"0", b"-1", b"2", b"99999999", b"2147483648", b"1e9", b"abc", b"", b"1.5"]
IMAGE_US = {0x00280010: "Rows", 0x00280011: "Columns", 0x00280100: "BitsAllocated",
            0x00280101: "BitsStored", 0x00280102: "HighBit", 0x00280002: "SamplesPerPixel",
            0x00280103: "PixelRepresentation"}
SYNTAXES = [b"1.2.3.4", b"", b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.1.99",
            b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.5", b"1.2.840.10008.1.2.4.90",
            b"\xff\xfe\x00garbage", b"1.2.840.10008.5.1.4.1.1.2"]
OTHER_VRS = [b"SQ", b"OB", b"US", b"DS", b"UN", b"AE", b"\x53\x04", b"ZZ", b"\x00\x00", b"UT"]


@dataclass(frozen=True)
class Element:
    tag: int
    vr: Optional[bytes]  # None: implicit VR
    header: int  # offset of the tag
    length_at: int  # offset of the length field
    length_size: int  # 2 or 4 bytes
    value: int  # offset of the value
    length: int
    little: bool


def syntax_of(data: bytes) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the dataset after the meta group, from its syntax."""
    uid = b""
    for el in elements(data, meta=True):
        if el.tag == 0x00020010:
            uid = data[el.value:el.value + el.length].rstrip(b"\x00 ")
    if uid == b"1.2.840.10008.1.2":
        return True, True
    return False, uid != b"1.2.840.10008.1.2.2"


def elements(data: bytes, meta: bool = False) -> list[Element]:
    """Top-level elements of the meta group (``meta``) or of the dataset; [] if unparsable."""
    found: list[Element] = []
    try:
        if meta:
            start, implicit, little = PREAMBLE, False, True
        else:
            meta_els = elements(data, meta=True)
            start = meta_els[-1].value + meta_els[-1].length if meta_els else PREAMBLE
            implicit, little = syntax_of(data)
        fp = io.BytesIO(data)
        fp.seek(start)
        stop = (lambda tag, vr, length: tag >> 16 != 2) if meta else None
        for raw in data_element_generator(fp, implicit, little, stop_when=stop, defer_size=64):
            length = raw.length
            if implicit:
                hdr, length_at, size = raw.value_tell - 8, raw.value_tell - 4, 4
            else:
                # Long form: tag, VR, 2 reserved bytes, 4-byte length; the VR sits 8 bytes
                # before the value.
                long_form = data[raw.value_tell - 10:raw.value_tell - 8] in LONG_VRS
                if long_form:
                    hdr, length_at, size = raw.value_tell - 12, raw.value_tell - 4, 4
                else:
                    hdr, length_at, size = raw.value_tell - 8, raw.value_tell - 2, 2
            vr_bytes = None if implicit else data[hdr + 4:hdr + 6]
            found.append(Element(int(raw.tag), vr_bytes, hdr, length_at, size, raw.value_tell,
                                 length if length != 0xFFFFFFFF else 0, little))
    except Exception:  # noqa: BLE001 - a damaged seed gives what was parsed so far
        pass
    return found


class Inapplicable(Exception):
    """The mutation has nothing to act on in this file (a plain bit flip is used instead)."""


def pick(rng: np.random.Generator, items):
    if not len(items):
        raise Inapplicable
    return items[int(rng.integers(len(items)))]


def replace_value(data: bytes, el: Element, value: bytes) -> bytes:
    """The element with a new value and a length field that says so (even length)."""
    if len(value) % 2:
        value += b" " if not value.endswith(b"\x00") else b"\x00"
    fmt = ("<" if el.little else ">") + ("H" if el.length_size == 2 else "I")
    if el.length_size == 2 and len(value) > 0xFFFF:
        value = value[:0xFFFE]
    return (data[:el.length_at] + struct.pack(fmt, len(value))
            + data[el.length_at + el.length_size:el.value] + value + data[el.value + el.length:])


# -- the mutations -------------------------------------------------------------------------
def bitflip(data: bytes, rng) -> tuple[bytes, str]:
    if not data:
        return data, "empty file"
    out = bytearray(data)
    n = int(rng.integers(1, 9))
    for _ in range(n):
        i = int(rng.integers(len(out)))
        out[i] ^= 1 << int(rng.integers(8))
    return bytes(out), f"{n} bit flip(s)"


def byteset(data: bytes, rng) -> tuple[bytes, str]:
    if not data:
        return data, "empty file"
    out = bytearray(data)
    n = int(rng.integers(1, 5))
    for _ in range(n):
        out[int(rng.integers(len(out)))] = pick(rng, [0x00, 0xFF, int(rng.integers(256))])
    return bytes(out), f"{n} byte(s) overwritten"


def truncate(data: bytes, rng) -> tuple[bytes, str]:
    meta = elements(data, meta=True)
    meta_end = meta[-1].value + meta[-1].length if meta else PREAMBLE
    pixel = [e for e in elements(data) if e.tag == 0x7FE00010]
    pixel_at = pixel[0].header if pixel else len(data)
    regions = {"preamble": (0, PREAMBLE), "meta": (PREAMBLE, meta_end),
               "dataset": (meta_end, pixel_at), "pixel data": (pixel_at, len(data))}
    name = pick(rng, [k for k, (a, b) in regions.items() if b > a])
    a, b = regions[name]
    cut = int(rng.integers(a, b))
    return data[:cut], f"truncated in the {name} at byte {cut}"


def length(data: bytes, rng) -> tuple[bytes, str]:
    els = elements(data, meta=bool(rng.random() < 0.25)) or elements(data, meta=True)
    el = pick(rng, els)
    if el.length_size == 2:
        new = pick(rng, [0xFFFF, 0xFFFE, 0, min(el.length + 2, 0xFFFF), max(el.length - 2, 0),
                         0x8000])
        fmt = "<H" if el.little else ">H"
    else:
        new = pick(rng, [0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, 0xFFFFFF00,
                         min(el.length + 2, 0xFFFFFFFF), max(el.length - 2, 0), 0,
                         int(rng.integers(2**32))])
        fmt = "<I" if el.little else ">I"
    new &= 0xFFFF if el.length_size == 2 else 0xFFFFFFFF
    out = data[:el.length_at] + struct.pack(fmt, new) + data[el.length_at + el.length_size:]
    return out, f"length of ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) {el.length} -> {new}"


def wrong_vr(data: bytes, rng) -> tuple[bytes, str]:
    els = [e for e in elements(data) if e.vr is not None]
    if not els:
        return bitflip(data, rng)
    private = [e for e in els if (e.tag >> 16) % 2]
    el = pick(rng, private if private and rng.random() < 0.4 else els)
    vr = pick(rng, OTHER_VRS)
    out = data[:el.header + 4] + vr + data[el.header + 6:]
    return out, f"VR of ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) {el.vr!r} -> {vr!r}"


def absurd_attribute(data: bytes, rng) -> tuple[bytes, str]:
    els = {e.tag: e for e in elements(data)}
    us = [t for t in IMAGE_US if t in els and els[t].length == 2]
    if rng.random() < 0.3 or not us:
        el = els.get(0x00280008)  # NumberOfFrames, IS
        value = pick(rng, ABSURD_IS)
        if el is None:
            return bitflip(data, rng)
        return replace_value(data, el, value), f"NumberOfFrames -> {value!r}"
    tag = pick(rng, us)
    el, value = els[tag], pick(rng, ABSURD_US)
    packed = struct.pack("<H" if el.little else ">H", value)
    out = data[:el.value] + packed + data[el.value + 2:]
    return out, f"{IMAGE_US[tag]} -> {value}"


def pixel_length(data: bytes, rng) -> tuple[bytes, str]:
    pixel = [e for e in elements(data) if e.tag == 0x7FE00010]
    if not pixel or pixel[0].length == 0:  # encapsulated: damage its fragments instead
        return truncate(data, rng)
    el = pixel[0]
    if rng.random() < 0.5:
        new = int(rng.integers(0, el.length))
        value = data[el.value:el.value + new]
        what = f"pixel data cut to {new} of {el.length} bytes"
    else:
        extra = int(pick(rng, [1, 2, 3, 64, el.length, 4 * el.length]))
        value = data[el.value:el.value + el.length] + bytes(rng.integers(0, 256, extra, dtype=np.uint8))
        what = f"pixel data grown by {extra} bytes"
    fmt = ("<" if el.little else ">") + "I"
    if el.length_size == 2:
        return truncate(data, rng)
    out = data[:el.length_at] + struct.pack(fmt, len(value)) + data[el.length_at + 4:el.value] + value
    return out, what


def endless_sequence(data: bytes, rng) -> tuple[bytes, str]:
    """An undefined-length sequence with an undefined-length item and no delimiter, inserted
    before the pixel data (swallowing it) or at the end."""
    implicit, little = syntax_of(data)
    if not little:
        return bitflip(data, rng)
    els = elements(data)
    pixel = [e for e in els if e.tag == 0x7FE00010]
    at = pixel[0].header if pixel and rng.random() < 0.6 else len(data)
    tag = struct.pack("<HH", 0x0008, 0x1140)  # Referenced Image Sequence
    header = tag + (struct.pack("<I", 0xFFFFFFFF) if implicit else b"SQ\x00\x00" + struct.pack("<I", 0xFFFFFFFF))
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    inner = struct.pack("<HH", 0x0008, 0x1150) + (struct.pack("<I", 8) if implicit else b"UI" + struct.pack("<H", 8)) + b"1.2.3.4\x00"
    return data[:at] + header + item + inner + data[at:], f"endless sequence at byte {at}"


def bad_number(data: bytes, rng) -> tuple[bytes, str]:
    els = [e for e in elements(data) if e.tag in NUMERIC_TAGS]
    if not els:
        return bitflip(data, rng)
    el, value = pick(rng, els), pick(rng, BAD_NUMBERS)
    return replace_value(data, el, value), f"{NUMERIC_TAGS[el.tag]} -> {value!r}"


def transfer_syntax(data: bytes, rng) -> tuple[bytes, str]:
    el = [e for e in elements(data, meta=True) if e.tag == 0x00020010]
    if not el:
        return bitflip(data, rng)
    value = pick(rng, SYNTAXES)
    return replace_value(data, el[0], value + (b"\x00" if len(value) % 2 else b"")), \
        f"TransferSyntaxUID -> {value!r}"


MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], tuple[bytes, str]]] = {
    "bitflip": bitflip, "byteset": byteset, "truncate": truncate, "length": length,
    "wrong_vr": wrong_vr, "absurd_attribute": absurd_attribute, "pixel_length": pixel_length,
    "endless_sequence": endless_sequence, "bad_number": bad_number,
    "transfer_syntax": transfer_syntax,
}


def mutate(data: bytes, seed: int) -> tuple[bytes, str, str]:
    """(damaged bytes, mutation name, description); one mutation, or two in a quarter of cases."""
    rng = np.random.default_rng(seed)
    names = list(MUTATIONS)
    name = pick(rng, names)
    out, what = apply(name, data, rng)
    if rng.random() < 0.25:
        second = pick(rng, names)
        out, more = apply(second, out, rng)
        name, what = f"{name}+{second}", f"{what}; {more}"
    return out, name, what


def apply(name: str, data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    try:
        return MUTATIONS[name](data, rng)
    except Inapplicable:
        return bitflip(data, rng)
