"""Reading a site's scans: what is used, what is left out and why, and what is never kept."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

pytest.importorskip("skimage")

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

from scanside.errors import InputError  # noqa: E402
from scanside.training import ctsim, site  # noqa: E402

from .site_data import write_nifti, write_series  # noqa: E402


def digest(folder) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def scanside_equipment() -> Sequence:
    item = Dataset()
    item.Manufacturer = "scanside"
    return Sequence([item])


@pytest.fixture
def mixed(tmp_path):
    """Two usable series and one of each thing a site folder holds that is not a scan."""
    root = tmp_path / "scans"
    write_series(root / "a", (1, 2, 3), ManufacturerModelName="Model A", ConvolutionKernel="B30f",
                 KVP="120")
    write_series(root / "b", (4,), size=80, pixel_mm=0.7)  # a single slice is a series too
    write_series(root / "mr", (5,), Modality="MR")
    write_series(root / "scout", (6,), ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    write_series(root / "reformat", (7,), ImageType=["DERIVED", "SECONDARY", "REFORMATTED"])
    write_series(root / "ours", (8,), ContributingEquipmentSequence=scanside_equipment())
    write_series(root / "nospacing", (9,), PixelSpacing=None)
    write_series(root / "oblong", (10,), PixelSpacing=[0.5, 0.9])
    (root / "notes.txt").write_text("not an image")
    return root


def test_usable_series_are_read_and_everything_else_is_left_out_with_its_reason(mixed):
    before = digest(mixed)
    lines = []
    scans = site.read_scans([mixed], echo=lines.append)
    assert digest(mixed) == before  # inputs are only read
    assert [len(s.slices) for s in scans.series] == [3, 1]
    first, second = scans.series
    assert first.slices[0].hu.dtype == np.float32 and first.slices[0].pixel_mm == pytest.approx(0.8)
    assert second.slices[0].pixel_mm == pytest.approx(0.7)
    assert first.facts["model"] == "Model A" and first.facts["kernel"] == "B30f"
    reasons = {item.path.split("/scans/")[1].split("/")[0]: item.reason for item in scans.left_out}
    assert reasons["mr"].startswith("not CT (Modality MR)")
    assert reasons["scout"].startswith("a localizer")
    assert reasons["reformat"].startswith("a derived image")
    assert reasons["ours"].startswith("scanside's own derived output")
    assert reasons["nospacing"].startswith("no pixel spacing")
    assert reasons["oblong"].startswith("pixels are not square")
    assert "not a DICOM file" in reasons["notes.txt"]
    assert len(scans.left_out) == 7
    # The terminal names each file and its reason; the summary counts them by reason only.
    assert any("mr/000.dcm" in line and "Modality MR" in line for line in lines)
    summary = scans.summary()
    assert summary["series"] == 2 and summary["slices"] == 4
    assert summary["scanner_models"] == ["Model A"] and summary["kvp"] == ["120"]
    assert sum(summary["left_out"].values()) == 7
    assert str(mixed) not in str(summary) and "000.dcm" not in str(summary)  # no path


def test_series_are_named_by_index_and_hash_never_by_uid(mixed):
    import pydicom

    scans = site.read_scans([mixed / "a"], echo=lambda _: None)
    uid = pydicom.dcmread(next((mixed / "a").glob("*.dcm"))).SeriesInstanceUID
    name = scans.series[0].name
    assert name.startswith("s01-") and len(name) == 12
    assert uid not in name and uid[-8:] not in name
    again = site.read_scans([mixed / "a"], echo=lambda _: None)
    assert again.series[0].name == name  # stable: a site can match runs


def test_nothing_usable_is_an_input_error_naming_the_arguments(mixed):
    with pytest.raises(InputError, match="no usable CT slice.*7 file"):
        site.read_scans([mixed / "mr", mixed / "scout", mixed / "reformat", mixed / "ours",
                         mixed / "nospacing", mixed / "oblong", mixed / "notes.txt"],
                        echo=lambda _: None)
    with pytest.raises(InputError, match="missing.*no such file or folder"):
        site.read_scans([mixed / "missing"], echo=lambda _: None)


def test_max_slices_spreads_over_every_series(tmp_path):
    write_series(tmp_path / "long", tuple(range(12)), size=64)
    write_series(tmp_path / "short", (20, 21, 22), size=64)
    scans = site.read_scans([tmp_path], max_slices=5, echo=lambda _: None)
    counts = [len(s.slices) for s in scans.series]
    assert sum(counts) == 5 and min(counts) >= 1
    long = max(scans.series, key=lambda s: s.length)
    positions = [s.position for s in long.slices]
    assert positions[0] == 0 and positions[-1] == 11  # spread, not the first few


def test_shares_and_spread():
    assert site.shares([10, 30], None) == [None, None]
    assert site.shares([10, 30], 100) == [None, None]
    assert site.shares([10, 30], 8) == [2, 6]
    assert sum(site.shares([1, 1, 50], 3)) == 3 and min(site.shares([1, 1, 50], 3)) == 1
    assert site.spread(10, 3) == [0, 4, 9] or site.spread(10, 3) == [0, 5, 9]
    assert site.spread(4, None) == [0, 1, 2, 3]


def test_nifti_volumes_are_series_and_non_hu_volumes_are_left_out(tmp_path):
    pytest.importorskip("nibabel")
    volume = np.stack([ctsim.make_phantom(s, 64).hu for s in (1, 2, 3)], axis=-1)
    good = write_nifti(tmp_path / "ct.nii.gz", volume, 0.9)
    write_nifti(tmp_path / "mr.nii.gz", np.full((32, 32, 2), 300.0))
    scans = site.read_scans([tmp_path], echo=lambda _: None)
    assert len(scans.series) == 1 and len(scans.series[0].slices) == 3
    assert scans.series[0].slices[0].pixel_mm == pytest.approx(0.9)
    assert scans.series[0].facts["format"] == "NIfTI"
    assert [item.reason.split(" (")[0] for item in scans.left_out] == [
        "values 300..300 do not look like HU"]
    assert good.is_file()


def test_each_frame_of_a_multi_frame_file_is_a_slice_of_its_own(tmp_path):
    from pydicom.uid import generate_uid

    from scanside.dicom.synthetic import simulated_ct

    frames = np.stack([ctsim.make_phantom(s, 64).hu for s in (1, 2, 3)])
    ds = simulated_ct(frames[0], "multi-frame", 0.8)
    ds.set_pixel_data(np.round(frames + 1024).astype(np.int16), "MONOCHROME2", 16)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    (tmp_path / "mf").mkdir()
    ds.save_as(tmp_path / "mf" / "all.dcm", enforce_file_format=True)
    scans = site.read_scans([tmp_path / "mf"], echo=lambda _: None)
    series = scans.series[0]
    assert series.length == 3 and [s.position for s in series.slices] == [0, 1, 2]
    assert np.allclose(series.slices[2].hu, np.clip(np.round(frames[2]), -1000, 3000))
    assert len(site.read_scans([tmp_path / "mf"], max_slices=2, echo=lambda _: None)
               .series[0].slices) == 2  # frames count against --max-slices


def test_screenshots_and_burned_in_text_are_left_out(tmp_path):
    write_series(tmp_path / "sc", (1,), size=64, SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
    write_series(tmp_path / "burned", (2,), size=64, BurnedInAnnotation="YES")
    write_series(tmp_path / "good", (3,), size=64)
    scans = site.read_scans([tmp_path], echo=lambda _: None)
    reasons = sorted(item.reason.split(" (")[0] for item in scans.left_out)
    assert reasons == ["burned-in annotation", "not a CT image"]


def test_reasons_in_reports_never_carry_the_path(tmp_path):
    pytest.importorskip("nibabel")
    folder = tmp_path / "DOE^JOHN"
    write_series(folder / "good", (1,), size=64)
    (folder / "scan.nii.gz").write_bytes(b"not a volume")  # nibabel's message names the file
    lines = []
    scans = site.read_scans([folder], echo=lines.append)
    [item] = scans.left_out
    assert "DOE" in item.path and "DOE" in " ".join(lines)  # the terminal shows where
    assert "DOE" not in item.reason and item.reason.startswith("not a readable NIfTI volume")


def test_fewer_slices_than_series_takes_one_from_each_of_a_spread():
    assert site.shares([5] * 10, 3) == [1, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert site.spread(7, 0) == []
