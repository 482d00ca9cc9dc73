"""Damaged files, each a case the issue reported or the fuzzer found: refused by scanside's own
error naming the file and the element (value shown only when it cannot identify a patient),
or read with a documented fallback — never a traceback, an abort or a huge allocation."""

from __future__ import annotations

import logging
import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest

from scanside.dicom import enhance_series, read_header
from scanside.dicom.read import read_pixels, read_values
from scanside.errors import InputError
from tests.fuzz.mutate import elements, replace_value

from .conftest import Identity, enhanced_ct, pydicom_file


def damaged(tmp_path: Path, source: Path, change) -> Path:
    """A copy of ``source`` with ``change(bytes) -> bytes`` applied."""
    path = tmp_path / "in" / f"damaged_{source.name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(change(source.read_bytes()))
    return path


def with_value(tag: int, value: bytes, meta: bool = False):
    def change(data: bytes) -> bytes:
        el = next(e for e in elements(data, meta=meta) if e.tag == tag)
        return replace_value(data, el, value)
    return change


def with_vr(tag: int, vr: bytes):
    def change(data: bytes) -> bytes:
        el = next(e for e in elements(data) if e.tag == tag)
        return data[:el.header + 4] + vr + data[el.header + 6:]
    return change


def refused(path: Path, *fragments: str) -> str:
    """The whole read (header and pixels) must refuse ``path`` with every fragment said."""
    with pytest.raises(InputError) as info:
        read_values(read_header(path))
    message = str(info.value)
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message
    return message


def test_a_transfer_syntax_uid_that_is_not_one(tmp_path):
    """Issue 14: `ValueError: UID is not a transfer syntax.` escaped as a traceback."""
    path = damaged(tmp_path, pydicom_file("CT_small.dcm"),
                   with_value(0x00020010, b"1.2.3.4\x00", meta=True))
    refused(path, "TransferSyntaxUID (0002,0010) '1.2.3.4' is not a transfer syntax")


@pytest.mark.parametrize("tag, value, name", [
    (0x00281053, b"-91R2000", "RescaleSlope (0028,1053) '-91R2000'"),
    (0x00280030, b"1.000\x08", "PixelSpacing (0028,0030) '1.000\\x08'"),
    (0x00200032, b"nan\\0\\0", "ImagePositionPatient"),
    (0x00281052, b"1e999", "RescaleIntercept"),
])
def test_malformed_decimal_strings_are_refused_with_tag_and_value(tmp_path, tag, value, name):
    """Issue 14: `could not convert string to float: '-91R2000'` escaped as a traceback."""
    path = damaged(tmp_path, pydicom_file("CT_small.dcm"), with_value(tag, value))
    refused(path, name)


def test_a_malformed_window_falls_back_and_says_so(tmp_path, caplog):
    """The window is a display hint with a documented default: the image range is used."""
    path = damaged(tmp_path, pydicom_file("MR_small.dcm"), with_value(0x00281050, b"6R0"))
    caplog.set_level(logging.WARNING)
    report = enhance_series([path], Identity(), tmp_path / "out", progress=False)
    assert report.ok and len(report.written) == 1
    assert "WindowCenter (0028,1050)" in caplog.text and "left out" in caplog.text
    assert "image range" in pydicom.dcmread(report.written[0]).DerivationDescription


def test_a_private_element_with_a_flipped_vr_is_left_out(tmp_path, caplog):
    """Issue 14: `Unknown Value Representation '0x53 0x04' in tag (0027,1006)`."""
    source = pydicom_file("CT_small.dcm")
    private = next(e for e in elements(source.read_bytes()) if (e.tag >> 16) % 2 and e.vr)
    path = damaged(tmp_path, source, with_vr(private.tag, b"\x53\x04"))
    caplog.set_level(logging.WARNING)
    report = enhance_series([path], Identity(), tmp_path / "out", progress=False)
    assert report.ok, report.failures
    written = pydicom.dcmread(report.written[0])
    assert private.tag not in written
    assert f"private element ({private.tag >> 16:04X},{private.tag & 0xFFFF:04X})" in caplog.text


def test_a_flipped_vr_on_a_standard_element_is_refused(tmp_path):
    """Found by the fuzzer: CS read as US made writing fail and looked like a full disk."""
    path = damaged(tmp_path, pydicom_file("CT_small.dcm"), with_vr(0x00080008, b"US"))
    refused(path, "ImageType (0008,0008)", "cannot be decoded")


def test_multi_valued_number_of_frames_is_refused(tmp_path):
    """Found by the fuzzer: int(MultiValue) escaped as a TypeError traceback."""
    source = enhanced_ct(tmp_path / "src" / "enhanced.dcm")
    path = damaged(tmp_path, source, with_value(0x00280008, b"1\\2\\3"))
    refused(path, "NumberOfFrames (0028,0008) has 3 values, one expected")


def test_an_absurd_frame_count_is_refused_at_once(tmp_path):
    """Found by the fuzzer: NumberOfFrames 99999999 on an enhanced object looped over every
    declared frame (a hang); now its size is refused before any frame is looked at."""
    source = enhanced_ct(tmp_path / "src" / "enhanced.dcm")
    path = damaged(tmp_path, source, with_value(0x00280008, b"99999999"))
    with pytest.raises(InputError, match="NumberOfFrames is 99999999 but the Per-frame"):
        read_header(path)


def test_declared_sizes_are_checked_against_the_file_before_reading_pixels(tmp_path):
    source = pydicom_file("MR_small.dcm")

    def huge(data: bytes) -> bytes:  # Rows and Columns 65535: 8 GB of 16-bit pixels
        for tag in (0x00280010, 0x00280011):
            el = next(e for e in elements(data) if e.tag == tag)
            data = data[:el.value] + struct.pack("<H", 65535) + data[el.value + 2:]
        return data

    path = damaged(tmp_path, source, huge)
    with pytest.raises(InputError, match="GiB decoded"):
        read_header(path)


def test_pixel_data_longer_than_declared_is_refused(tmp_path):
    source = pydicom_file("MR_small.dcm")

    def grow(data: bytes) -> bytes:  # pixel data doubled: Rows no longer describes it
        el = next(e for e in elements(data) if e.tag == 0x7FE00010)
        value = data[el.value:el.value + el.length]
        return data[:el.length_at] + struct.pack("<I", 2 * len(value)) + value + value

    refused(damaged(tmp_path, source, grow), "more than 1 frame(s) of 64x64 hold")


def test_a_jpeg_ls_header_that_disagrees_with_columns_is_refused(tmp_path):
    """Found by the fuzzer: CharLS aborted the whole process (SIGABRT) on this file."""
    source = pydicom_file("MR_small_jpeg_ls_lossless.dcm")

    def wider(data: bytes) -> bytes:
        el = next(e for e in elements(data) if e.tag == 0x00280011)
        return data[:el.value] + struct.pack("<H", 256) + data[el.value + 2:]

    path = damaged(tmp_path, source, wider)
    ds = read_pixels(read_header(path))
    with pytest.raises(InputError, match="JPEG header says 64x64 with 1 component"):
        from scanside.dicom.read import frame_values

        frame_values(ds, 0, path)


def test_a_jpeg_2000_size_that_disagrees_with_the_header_is_refused(tmp_path):
    """Found by the fuzzer: a flipped bit in the SIZ segment made OpenJPEG allocate 6 GB."""
    source = pydicom_file("JPEG2000.dcm")

    def taller(data: bytes) -> bytes:
        at = data.find(b"\xff\x4f\xff\x51")
        ysiz = at + 12  # Xsiz at +8, Ysiz at +12
        return data[:ysiz] + struct.pack(">I", 60000) + data[ysiz + 4:]

    refused(damaged(tmp_path, source, taller), "JPEG 2000 SIZ segment says 60000x256")


def test_command_elements_in_the_dataset_are_not_copied(tmp_path):
    """Found by the fuzzer: a bit flip made a (0000,xxxx) element; pydicom refused to write."""
    def command(data: bytes) -> bytes:  # (0000,0902) LO "damage" as the dataset's first element
        first = elements(data)[0].header
        return data[:first] + struct.pack("<HH", 0, 0x0902) + b"LO\x06\x00damage" + data[first:]

    path = damaged(tmp_path, pydicom_file("MR_small.dcm"), command)
    assert 0x00000902 in pydicom.dcmread(path)
    report = enhance_series([path], Identity(), tmp_path / "out", progress=False)
    assert report.ok, report.failures
    assert 0x00000902 not in pydicom.dcmread(report.written[0])


def test_a_garbage_sop_class_is_not_quoted(tmp_path):
    """Found by the fuzzer: a length change made SOP Class UID swallow the whole file, and the
    message printed it (pixel data, and whatever else followed)."""
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"), stop_before_pixels=True)
    del ds.Rows
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4\x01\x02garbage"
    path = tmp_path / "in" / "garbage.dcm"
    path.parent.mkdir()
    ds.save_as(path)
    with pytest.raises(InputError) as info:
        read_header(path)
    message = str(info.value).split(": ", 1)[1]  # after the file's name
    assert "SOP class unreadable" in message and "garbage" not in message


def test_inputs_are_never_modified(tmp_path):
    source = tmp_path / "in" / "ct.dcm"
    source.parent.mkdir()
    shutil.copy(pydicom_file("CT_small.dcm"), source)
    before = (source.read_bytes(), source.stat().st_mtime_ns)
    enhance_series([source], Identity(), tmp_path / "out", progress=False)
    assert (source.read_bytes(), source.stat().st_mtime_ns) == before
    assert np.array_equal(pydicom.dcmread(source).pixel_array,
                          pydicom.dcmread(pydicom_file("CT_small.dcm")).pixel_array)


def test_a_derived_instance_that_cannot_be_encoded_is_the_inputs_error():
    """encode() named InputError without importing it: a NameError instead of the message."""
    from pydicom.dataset import Dataset, FileMetaDataset

    from scanside.dicom.write import encode

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.add_new(0x00280010, "US", "not a number")
    with pytest.raises(InputError, match=r"src\.dcm: the derived instance cannot be encoded "
                                         r"element \(0028,0010\)"):
        encode(ds, "src.dcm")
