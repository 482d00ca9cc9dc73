"""enhance_series with maps: beside each enhanced instance, one instance in each map series
(scanside.dicom.maps.KINDS), with the values the runtime computed, in HU, the flagged change
as a SEG over the structure the model removed, the counts in the report; resumable, private
and valid DICOM like the enhanced series.

The stand-in model is a perfect denoiser that also removes a lesion: it returns the clean
phantom (without noise and without the disk drawn into some slices) whatever it is given, so
what changed is known to the HU: the noise everywhere in the body, and the disk.
"""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from scanside.dicom.maps import KINDS
from scanside.dicom.series import enhance_series
from scanside.dicom.window import Window
from scanside.runtime.maps import CHANGE_K, Enhanced, change_maps, check_maps, make_maps

from .conftest import SENTINELS, assert_no_identifiers, ct_slice, enhanced_ct, require_tools, sentinel_elements
from .test_series import dciodvfy_errors, snapshot

SIZE = 64
WINDOW = Window(0.0, 2000.0, "modality default")  # CT's: [-1000, 1000] HU
PIXEL_MM2 = 0.7 * 0.7  # ct_slice's spacing
LESION = (32, 22, 5)  # row, column, radius px: inside the body, left of the bone
LESION_HU = 150.0  # above the body's 40 HU
NOISE_HU = 15.0
OFFSETS = (0.0, 0.001, 0.002, 0.003)  # the 4 "views": the clean image shifted by these
SPREAD_HU = float(np.std(OFFSETS, ddof=1) * WINDOW.width)  # 2.58 HU
PM_CLASS, SEG_CLASS = "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.66.4"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def grid() -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:SIZE, 0:SIZE]


def lesion_mask() -> np.ndarray:
    r, c = grid()
    row, col, radius = LESION
    return (r - row) ** 2 + (c - col) ** 2 <= radius ** 2


def clean_hu() -> np.ndarray:
    """Air below the window (-1024 HU, kept from the source), a 40 HU body, dense bone above
    the window (1800 HU)."""
    y, x = (np.mgrid[0:SIZE, 0:SIZE] + 0.5) / SIZE * 2 - 1
    hu = np.where(x ** 2 / 0.8 + y ** 2 / 0.5 < 1, 40.0, -1024.0)
    return np.where(x ** 2 + (y + 0.05) ** 2 < 0.12 ** 2, 1800.0, hu)


def body() -> np.ndarray:
    hu = clean_hu()
    return (hu > -1000) & (hu < 1000)


def noisy_slice(seed: int, lesion: bool) -> np.ndarray:
    hu = clean_hu()
    if lesion:
        hu = np.where(lesion_mask(), hu + LESION_HU, hu)
    noise = np.random.default_rng(seed).normal(0.0, NOISE_HU, hu.shape).round()
    return np.where(body(), hu + noise, hu)


class Remover:
    """Returns the clean phantom (in the window's units) for every image: it removes the
    noise and the lesion. Its maps come from the real scanside.runtime.maps.make_maps, with
    four predictions that differ by known offsets."""

    manifest = types.SimpleNamespace(source_hash="5ca75ide" * 8, maps=None)

    def __init__(self) -> None:
        self.calls = 0

    def clean(self, image: np.ndarray) -> np.ndarray:
        assert image.shape == (SIZE, SIZE)
        return WINDOW.to_unit(clean_hu())

    def enhance(self, image, sampling, **extra):
        self.calls += 1
        return self.clean(image)

    def enhance_maps(self, image, sampling, maps, *, change_k=CHANGE_K, **extra):
        self.calls += 1
        out = self.clean(image)
        predictions = [np.clip(out + d, 0.0, 1.0) for d in OFFSETS]
        return Enhanced(out, make_maps(check_maps(maps), out, image, predictions, k=change_k))

    def describe(self, sampling):
        return "lesion remover (test)"

    def fingerprint(self, sampling):
        return "lesion-remover-" + repr(sampling)


@pytest.fixture
def series(tmp_path) -> list[Path]:
    """Three slices; the lesion in the first two (by position), not in the third."""
    uid = generate_uid()
    return [ct_slice(tmp_path / "in" / f"slice{n}.dcm", noisy_slice(n, n < 3), float(n), n, uid)
            for n in (1, 2, 3)]


def hu_of(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def kind_of(ds: pydicom.Dataset) -> str:
    """Which output ``ds`` is: "enhanced" or one of KINDS."""
    if ds.SOPClassUID == PM_CLASS:
        return f"{ds.ContentLabel.lower()}-pm"
    if ds.SOPClassUID == SEG_CLASS:
        return "change-seg"
    assert ds.SOPClassUID == CT_CLASS, ds.SOPClassUID
    third = str(ds.ImageType[2]).lower()
    return third if third in KINDS else "enhanced"


def source_of(ds: pydicom.Dataset) -> str:
    if "PerFrameFunctionalGroupsSequence" in ds:
        refs = {group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                for group in ds.PerFrameFunctionalGroupsSequence}
        assert len(refs) == 1
        return refs.pop()
    return ds.SourceImageSequence[0].ReferencedSOPInstanceUID


def outputs(paths) -> dict[str, dict[str, tuple[Path, pydicom.Dataset]]]:
    """{source SOP Instance UID: {kind: (path, dataset)}}."""
    found: dict[str, dict[str, tuple[Path, pydicom.Dataset]]] = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        kind = kind_of(ds)
        by_kind = found.setdefault(source_of(ds), {})
        assert kind not in by_kind, (kind, path)
        by_kind[kind] = (path, ds)
    return found


def pm_values(ds: pydicom.Dataset) -> np.ndarray:
    """A single-frame Parametric Map's real-world values (HU) from the stored floats."""
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    unit = mapping.MeasurementUnitsCodeSequence[0]
    assert (unit.CodingSchemeDesignator, unit.CodeValue) == ("UCUM", "[hnsf'U]")
    return (ds.pixel_array.astype(np.float64) * float(mapping.RealWorldValueSlope)
            + float(mapping.RealWorldValueIntercept))


def run(sources, out, **options):
    return enhance_series(sources, Remover(), out, progress=False,
                          maps=("uncertainty", "change"), **options)


def test_each_instance_gets_one_object_in_each_map_series(series, tmp_path):
    report = run(series, tmp_path / "out")
    assert report.ok, report.failures
    assert len(report.written) == len(series) * (1 + len(KINDS))
    sources = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in series}
    found = outputs(report.written)
    assert set(found) == set(sources)
    for uid, by_kind in found.items():
        assert set(by_kind) == {"enhanced", *KINDS}
        for _, ds in by_kind.values():
            assert ds.StudyInstanceUID == sources[uid].StudyInstanceUID
            assert ds.FrameOfReferenceUID == sources[uid].FrameOfReferenceUID
            assert ds.SOPInstanceUID != uid
    # One series per kind, the same for every instance, each distinct from the others and
    # from the source's; each in a folder named by its series UID.
    series_uids = {kind: {found[u][kind][1].SeriesInstanceUID for u in found}
                   for kind in ("enhanced", *KINDS)}
    assert all(len(uids) == 1 for uids in series_uids.values()), series_uids
    flat = [next(iter(uids)) for uids in series_uids.values()]
    assert len(set(flat)) == len(flat) == 1 + len(KINDS)
    assert sources[next(iter(sources))].SeriesInstanceUID not in flat
    numbers = {kind: found[next(iter(found))][kind][1].SeriesNumber for kind in series_uids}
    assert len(set(numbers.values())) == len(numbers)
    for by_kind in found.values():
        for path, ds in by_kind.values():
            assert path.parent.name == ds.SeriesInstanceUID
    files = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == sorted(report.written)  # nothing else, no partial files


def test_the_map_values_are_what_the_model_changed_in_hu(series, tmp_path):
    report = run(series, tmp_path / "out")
    assert report.ok, report.failures
    found = outputs(report.written)
    inside_body = body()
    for source_path in series:
        source = pydicom.dcmread(source_path)
        by_kind = found[source.SOPInstanceUID]
        input_hu = hu_of(source)
        enhanced_hu = hu_of(by_kind["enhanced"][1])
        inside = (input_hu > WINDOW.low) & (input_hu < WINDOW.high)
        assert inside.sum() > 1000 and (~inside).sum() > 100
        np.testing.assert_array_equal(inside, inside_body)
        np.testing.assert_array_equal(enhanced_hu[inside], clean_hu()[inside])  # the model's
        np.testing.assert_array_equal(enhanced_hu[~inside], input_hu[~inside])  # kept

        change = pm_values(by_kind["change-pm"][1])
        assert change.shape == (SIZE, SIZE)
        np.testing.assert_allclose(change[inside], (enhanced_hu - input_hu)[inside], atol=0.05)
        assert not change[~inside].any()  # not measured there
        # highdicom reads the same values back, by source instance.
        read = hd.pm.ParametricMap.from_dataset(by_kind["change-pm"][1])
        np.testing.assert_allclose(read.get_pixels_by_source_instance([source.SOPInstanceUID])[0],
                                   change, atol=1e-4)
        # The grayscale copy: the same values, whole HU.
        gray = hu_of(by_kind["change"][1])
        np.testing.assert_array_equal(gray, np.rint(change))

        uncertainty = pm_values(by_kind["uncertainty-pm"][1])
        np.testing.assert_allclose(uncertainty[inside], SPREAD_HU, rtol=1e-3)
        assert not uncertainty[~inside].any()
        np.testing.assert_array_equal(hu_of(by_kind["uncertainty"][1]), np.rint(uncertainty))


def test_the_change_seg_covers_the_removed_lesion(series, tmp_path):
    report = run(series, tmp_path / "out")
    found = outputs(report.written)
    lesion = lesion_mask()
    near = lesion.copy()
    for _ in range(8):  # what smoothing the change over 2 px may add around it
        near[1:] |= near[:-1]
        near[:-1] |= near[1:]
        near[:, 1:] |= near[:, :-1]
        near[:, :-1] |= near[:, 1:]
    # Pure noise crosses k = 3 local noise units here and there (the module measured 0.4 %
    # of an object's pixels on realistic anatomy; on this small phantom up to 2 %).
    stray_limit = 0.03 * body().sum()
    counts = {c["file"]: c for c in report.counts}
    assert len(counts) == len(series)
    for source_path in series:
        source = pydicom.dcmread(source_path)
        path, seg = found[source.SOPInstanceUID]["change-seg"]
        assert seg.SegmentationType == "BINARY"
        assert seg.SegmentSequence[0].SegmentLabel == "changed structure"
        mask = hd.seg.segread(path).get_pixels_by_source_instance(
            [source.SOPInstanceUID])[0, :, :, 0].astype(bool)
        # Exactly the runtime's mask of this input and output, where the window measured.
        input_hu = hu_of(source)
        _, flagged, _ = change_maps(WINDOW.to_unit(clean_hu()), WINDOW.to_unit(input_hu))
        np.testing.assert_array_equal(mask, flagged & body())
        enhanced_name = found[source.SOPInstanceUID]["enhanced"][0].name
        slice_counts = counts[enhanced_name]
        assert slice_counts["flagged_pixels"] == int(mask.sum())
        assert slice_counts["flagged_mm2"] == pytest.approx(mask.sum() * PIXEL_MM2, abs=0.05)
        assert slice_counts["change_k"] == CHANGE_K
        assert slice_counts["uncertainty_hu_mean"] == pytest.approx(SPREAD_HU, abs=0.01)
        assert slice_counts["views"] == len(OFFSETS) and slice_counts["calibrated"] is False
        if source.InstanceNumber < 3:  # the lesion was drawn here and removed
            assert mask[lesion].all(), f"{(~mask[lesion]).sum()} lesion pixels not flagged"
            assert (mask & ~near).sum() < stray_limit
            assert slice_counts["flagged_mm2"] >= lesion.sum() * PIXEL_MM2
        else:  # only noise was removed: no lesion-sized region, few stray pixels
            assert not (mask & lesion).any()
            assert mask.sum() < min(stray_limit, lesion.sum())
        # The counts travel in the map objects too; the enhanced instance is the same bytes
        # with or without maps (test_one_enhanced_uid_is_one_object_whatever_the_maps).
        for kind, (_, ds) in found[source.SOPInstanceUID].items():
            if kind == "enhanced":
                assert "ImageComments" not in ds
                continue
            assert f"flagged over {slice_counts['flagged_mm2']:g} mm2" in ds.ImageComments


def test_a_rerun_writes_nothing_and_another_k_only_new_maps(series, tmp_path):
    out = tmp_path / "out"
    first = run(series, out)
    assert first.ok and len(first.written) == 18
    before = snapshot([out])
    again = run(series, out)
    assert again.ok, again.failures
    assert again.written == [] and again.counts == []
    assert sorted(again.skipped) == sorted(p for p in first.written
                                           if kind_of(pydicom.dcmread(p)) == "enhanced")
    assert snapshot([out]) == before

    other = run(series, tmp_path / "other", change_k=6.0)
    assert other.ok and len(other.written) == 18
    a, b = outputs(first.written), outputs(other.written)
    for uid in a:
        enhanced_a, enhanced_b = a[uid]["enhanced"][1], b[uid]["enhanced"][1]
        assert enhanced_a.SOPInstanceUID == enhanced_b.SOPInstanceUID
        assert enhanced_a.SeriesInstanceUID == enhanced_b.SeriesInstanceUID
        assert enhanced_a.PixelData == enhanced_b.PixelData
        assert a[uid]["enhanced"][0].relative_to(out) == \
            b[uid]["enhanced"][0].relative_to(tmp_path / "other")
        for kind in KINDS:
            assert a[uid][kind][1].SOPInstanceUID != b[uid][kind][1].SOPInstanceUID, kind
            assert a[uid][kind][1].SeriesInstanceUID != b[uid][kind][1].SeriesInstanceUID, kind
    assert {c["change_k"] for c in other.counts} == {6.0}
    # A higher threshold flags less of the same change.
    flagged = lambda r: sum(c["flagged_pixels"] for c in r.counts)
    assert 0 < flagged(other) < flagged(first)


def test_patient_attributes_stay_where_they_belong(series, tmp_path, caplog):
    """Derived objects must carry the patient module (a PACS files them under the patient),
    but a patient value must appear nowhere else: not in another element, not in a log line,
    not in the report."""
    caplog.set_level(logging.DEBUG)
    report = run(series, tmp_path / "out")
    assert report.ok
    source = pydicom.dcmread(series[0])
    for path in report.written:
        ds = pydicom.dcmread(path)
        for keyword in SENTINELS:
            assert ds.get(keyword) == source.get(keyword), (path, keyword)
        assert sorted(sentinel_elements(ds)) == sorted(SENTINELS), path
        raw = path.read_bytes()
        for keyword, value in SENTINELS.items():
            assert raw.count(value.encode()) == 1, (path, keyword)  # the element itself only
            if "^" in value:
                assert value.replace("^", " ").encode() not in raw
    assert_no_identifiers(caplog.text)
    data = json.dumps({"written": [str(p) for p in report.written],
                       "skipped": [str(p) for p in report.skipped],
                       "failures": [[str(p), m] for p, m in report.failures],
                       "counts": report.counts, "images": report.images})
    assert_no_identifiers(data)


def test_inputs_are_unchanged(series, tmp_path):
    before = snapshot(series)
    run(series, tmp_path / "out")
    run(series, tmp_path / "out")
    assert snapshot(series) == before


def test_every_written_object_passes_dciodvfy(series, tmp_path):
    require_tools()
    report = run(series, tmp_path / "out")
    assert report.ok
    sources = {pydicom.dcmread(p).SOPInstanceUID: p for p in series}
    source_errors = {uid: dciodvfy_errors(p) for uid, p in sources.items()}
    checked = 0
    for path in report.written:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        new = dciodvfy_errors(path) - source_errors[source_of(ds)]
        assert not new, f"{kind_of(ds)} {path.name}: {new}"
        checked += 1
    assert checked == 18


def test_a_multiframe_source_fails_and_the_batch_goes_on(series, tmp_path):
    multiframe = enhanced_ct(tmp_path / "mf" / "enhanced.dcm")
    report = run([multiframe, *series], tmp_path / "out")
    assert [p for p, _ in report.failures] == [multiframe]
    assert "frames" in report.failures[0][1] and "maps" in report.failures[0][1]
    assert len(report.written) == len(series) * (1 + len(KINDS))
    assert len(report.counts) == len(series)
    assert set(outputs(report.written)) == {pydicom.dcmread(p).SOPInstanceUID for p in series}
    # Without maps the same object is enhanced: the refusal is the maps'.
    plain = enhance_series([multiframe], Remover(), tmp_path / "plain", progress=False)
    assert plain.ok and len(plain.written) == 1


def test_one_enhanced_uid_is_one_object_whatever_the_maps(series, tmp_path):
    """The enhanced instance's UID does not depend on the maps or their k (Job.maps_fingerprint
    says neither changes the enhanced image), so its content must not either: DICOM allows
    one object per SOP Instance UID, and a PACS that holds the first keeps it when another
    arrives under the same UID. (The maps' counts were once written into the enhanced
    instance's ImageComments, giving three different objects under one UID.)"""
    from .test_series import timeless

    runs = {"k3": run(series, tmp_path / "k3"), "k6": run(series, tmp_path / "k6", change_k=6.0),
            "none": enhance_series(series, Remover(), tmp_path / "none", progress=False)}
    enhanced = {name: {ds.SOPInstanceUID: timeless(path) for path in report.written
                       if kind_of(ds := pydicom.dcmread(path)) == "enhanced"}
                for name, report in runs.items()}
    assert set(enhanced["k3"]) == set(enhanced["k6"]) == set(enhanced["none"])
    for uid, ds in enhanced["k3"].items():
        for other in ("k6", "none"):
            differs = sorted(e.keyword for e in ds if e.tag not in enhanced[other][uid]
                             or enhanced[other][uid][e.tag] != e) + \
                sorted(e.keyword for e in enhanced[other][uid] if e.tag not in ds)
            assert not differs, f"{other}: same SOP Instance UID, different {differs}"


def test_a_source_of_another_modality_fails_with_maps_and_the_batch_goes_on(series, tmp_path):
    from .conftest import pydicom_file

    mr = pydicom_file("MR_small.dcm")
    report = run([mr, *series], tmp_path / "out")
    assert [p for p, _ in report.failures] == [mr]
    assert "modality MR; maps are written in HU, for CT only" in report.failures[0][1]
    assert len(report.counts) == len(series)
