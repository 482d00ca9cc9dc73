"""segment_series: a DICOM SEG per series and Frame of Reference, with ``annotate`` a TID 1500
SR of the lesion candidates measured on the input, previews, resumable, private and valid.

The stand-in segmenter marks what is bright in its input (the lesion disks drawn at 300 HU
into a 40 HU body) with a known probability, through the runtime's own ``combine``.
"""

from __future__ import annotations

import json
import logging
import math
import types
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from scanside.dicom.segment import RESEARCH_AID, segment_series
from scanside.runtime.segment import combine
from scanside.training.train import LESION_LABELS
from tests.system_tools import require

from .conftest import SENTINELS, assert_no_identifiers, ct_slice, require_tools, sentinel_elements
from .test_objects import texts
from .test_series import dciodvfy_errors, run_tool, snapshot

SIZE = 64
SPACING = 0.7  # ct_slice's pixel spacing, mm
PIXEL_MM2 = SPACING * SPACING
LESION_HU, BODY_HU = 300.0, 40.0
PROBABILITY = 0.9  # the mean of the stand-in's samples inside what it marks
SAMPLES = (1.0, 1.0, 0.8, 0.8)
SEG_CLASS, SR_CLASS = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.33"
# Lesions by slice number: (row, column, radius px); slice 3 has none but a 2x2 speck the
# segmenter marks and the candidates leave out (smaller than MIN_AREA_PX).
LESIONS = {1: (24, 20, 6), 2: (36, 40, 4)}
SPECK = (slice(40, 42), slice(20, 22))


def disk(row: int, col: int, radius: int) -> np.ndarray:
    r, c = np.mgrid[0:SIZE, 0:SIZE]
    return (r - row) ** 2 + (c - col) ** 2 <= radius ** 2


def body() -> np.ndarray:
    y, x = (np.mgrid[0:SIZE, 0:SIZE] + 0.5) / SIZE * 2 - 1
    return x ** 2 / 0.8 + y ** 2 / 0.5 < 1


def marked(number: int) -> np.ndarray:
    """What the segmenter marks on slice ``number``."""
    mask = np.zeros((SIZE, SIZE), bool)
    if number in LESIONS:
        mask |= disk(*LESIONS[number])
    else:
        mask[SPECK] = True
    return mask


def slice_hu(number: int) -> np.ndarray:
    hu = np.where(body(), BODY_HU, -1024.0)
    hu = np.where(marked(number), LESION_HU, hu)
    noise = np.random.default_rng(number).normal(0.0, 8.0, hu.shape).round()
    return np.where(body(), hu + noise, hu)


class Segmenter:
    """Marks pixels above 200 HU (in CT's default window, unit 0.6) inside the window."""

    manifest = types.SimpleNamespace(labels=list(LESION_LABELS), source_hash="5e9a" * 16)

    def __init__(self) -> None:
        self.calls = 0

    def segment(self, image, sampling=None, *, seeds=None, threshold=None):
        self.calls += 1
        assert image.shape == (SIZE, SIZE) and 0.0 <= image.min() and image.max() <= 1.0
        bright = ((image > 0.6) & (image < 0.9)).astype(np.float32)
        return combine([bright * s for s in SAMPLES], 0.5 if threshold is None else threshold)

    def describe_segment(self, sampling=None, seeds=None, threshold=None):
        return "bright-spot segmenter (test)"

    def segment_fingerprint(self, sampling=None, seeds=None, threshold=None):
        return f"bright-spot-{sampling!r}-{seeds}-{threshold}"


def write_series(folder: Path, numbers=(1, 2, 3), uid=None) -> list[Path]:
    uid = uid or generate_uid()
    return [ct_slice(folder / f"slice{n}.dcm", slice_hu(n), float(n), n, uid) for n in numbers]


@pytest.fixture
def series(tmp_path) -> list[Path]:
    return write_series(tmp_path / "in")


def run(paths, out, **options):
    return segment_series(paths, Segmenter(), out, progress=False, **options)


def objects(report) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Written DICOM by SOP class: "seg", "sr"."""
    out: dict[str, list] = {"seg": [], "sr": []}
    for path in report.written:
        ds = pydicom.dcmread(path)
        out[{SEG_CLASS: "seg", SR_CLASS: "sr"}[ds.SOPClassUID]].append((path, ds))
    return out


def seg_masks(path: Path, sources: list[pydicom.Dataset]) -> np.ndarray:
    """(F, H, W) of segment 1, one frame per source, in the sources' order."""
    return hd.seg.segread(path).get_pixels_by_source_instance(
        [s.SOPInstanceUID for s in sources])[..., 0]


def test_one_seg_per_series_with_the_marked_pixels(series, tmp_path):
    report = run(series, tmp_path / "out")
    assert report.ok, report.failures
    found = objects(report)
    assert len(found["seg"]) == 1 and found["sr"] == []
    path, seg = found["seg"][0]
    assert path.name == "SEG01.dcm" and path.parent.name == seg.SeriesInstanceUID
    sources = [pydicom.dcmread(p) for p in series]
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.SegmentationType == "BINARY"
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == LESION_LABELS[0]["name"]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == \
        LESION_LABELS[0]["type"]["value"]
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == \
        f"scanside model {Segmenter.manifest.source_hash[:16]}"
    masks = seg_masks(path, sources)
    for mask, source in zip(masks, sources):
        # Without annotate the SEG is the engine's mask, the speck included.
        np.testing.assert_array_equal(mask.astype(bool), marked(int(source.InstanceNumber)))
    assert report.images == 3
    assert report.counts == [{"series": seg.SeriesInstanceUID[-12:], "slices": 3,
                              "flagged_pixels": int(sum(marked(n).sum() for n in (1, 2, 3)))}]
    files = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == [path]


def test_two_frames_of_reference_give_two_segs(tmp_path):
    paths = write_series(tmp_path / "in", (1, 2, 3, 4))
    other = generate_uid()
    for path in paths[2:]:  # slices 3 and 4: another Frame of Reference, the same series
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = other
        ds.save_as(path)
    report = run([tmp_path / "in"], tmp_path / "out")
    assert report.ok, report.failures
    segs = sorted(objects(report)["seg"], key=lambda item: item[0].name)
    assert [p.name for p, _ in segs] == ["SEG01.dcm", "SEG02.dcm"]
    sources = [pydicom.dcmread(p) for p in paths]
    first, second = segs
    assert first[1].FrameOfReferenceUID == sources[0].FrameOfReferenceUID != other
    assert second[1].FrameOfReferenceUID == other
    assert first[1].SeriesInstanceUID != second[1].SeriesInstanceUID
    assert first[1].SOPInstanceUID != second[1].SOPInstanceUID
    for (path, _), group in ((first, sources[:2]), (second, sources[2:])):
        masks = seg_masks(path, group)
        assert masks.shape[0] == 2
        for mask, source in zip(masks, group):
            np.testing.assert_array_equal(mask.astype(bool), marked(int(source.InstanceNumber)))
    assert [c["slices"] for c in report.counts] == [2, 2]


def test_annotate_lists_each_candidate_with_its_measurements(series, tmp_path):
    report = run(series, tmp_path / "out", annotate=True)
    assert report.ok, report.failures
    found = objects(report)
    assert len(found["seg"]) == 1 and len(found["sr"]) == 1
    (seg_path, seg), (sr_path, sr) = found["seg"][0], found["sr"][0]
    assert sr_path.name == "SR01.dcm"
    assert sr.SeriesInstanceUID not in (seg.SeriesInstanceUID, pydicom.dcmread(series[0])
                                        .SeriesInstanceUID)
    sources = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in series}
    assert RESEARCH_AID in texts(sr)

    groups = hd.sr.srread(sr_path).content.get_planar_roi_measurement_groups()
    assert len(groups) == len(LESIONS) == report.counts[0]["candidates"]
    seen = set()
    for group in groups:
        region = group.roi
        source = sources[region.ContentSequence[0].ReferencedSOPSequence[0]
                         .ReferencedSOPInstanceUID]
        number = int(source.InstanceNumber)
        row, col, radius = LESIONS[number]
        seen.add(number)
        drawn = disk(row, col, radius)
        (x, y), edge = region.value[0], region.value[1]
        assert abs(y - 0.5 - row) <= 0.5 and abs(x - 0.5 - col) <= 0.5  # SCOORD: index + 0.5
        assert edge[0] - x == pytest.approx(math.sqrt(drawn.sum() / math.pi), abs=0.01)
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        assert abs(values["Area"] - drawn.sum() * PIXEL_MM2) <= PIXEL_MM2
        assert abs(values["Diameter"] - 2 * radius * SPACING) <= SPACING
        assert values["Attenuation Coefficient"] == pytest.approx(LESION_HU, abs=5)
        contrast = values["Mean attenuation minus mean of surrounding ring"]
        assert contrast == pytest.approx(LESION_HU - BODY_HU, abs=8)
    assert seen == set(LESIONS)
    evidence = {uid for _, _, uid, _ in hd.sr.srread(sr_path).get_evidence()}
    assert evidence == set(sources) | {seg.SOPInstanceUID}

    # The SEG holds what the report lists: the speck on slice 3 is left out.
    ordered = sorted(sources.values(), key=lambda s: int(s.InstanceNumber))
    masks = seg_masks(seg_path, ordered)
    for mask, source in zip(masks, ordered):
        number = int(source.InstanceNumber)
        expected = disk(*LESIONS[number]) if number in LESIONS else np.zeros_like(mask, bool)
        np.testing.assert_array_equal(mask.astype(bool), expected)


def test_a_series_without_candidates_still_gets_a_report(tmp_path):
    paths = write_series(tmp_path / "in", (3,))  # the speck only
    report = run(paths, tmp_path / "out", annotate=True)
    assert report.ok, report.failures
    found = objects(report)
    (_, sr), = found["sr"]
    assert hd.sr.srread(found["sr"][0][0]).content.get_planar_roi_measurement_groups() == []
    assert RESEARCH_AID in texts(sr) and "No lesion candidates were marked." in texts(sr)
    assert report.counts[0]["candidates"] == 0 and report.counts[0]["flagged_pixels"] == 0


def test_fractional_seg_holds_the_probability(series, tmp_path):
    report = run(series, tmp_path / "out", fractional=True)
    assert report.ok, report.failures
    (path, seg), = objects(report)["seg"]
    assert seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "PROBABILITY"
    sources = [pydicom.dcmread(p) for p in series]
    read = hd.seg.segread(path)
    values = read.get_pixels_by_source_instance([s.SOPInstanceUID for s in sources],
                                                rescale_fractional=True)[..., 0]
    for frame, source in zip(values, sources):
        expected = np.where(marked(int(source.InstanceNumber)), PROBABILITY, 0.0)
        np.testing.assert_allclose(frame, expected, atol=0.5 / 255)


def test_previews_one_png_per_slice_with_the_outline(series, tmp_path):
    from PIL import Image

    report = run(series, tmp_path / "out", preview=True)
    assert report.ok, report.failures
    (path, _), = objects(report)["seg"]
    pngs = sorted(path.parent.glob("*.png"))
    # Named by position in the series (two sources may share a file name), as enhance names.
    order = [int(pydicom.dcmread(p).InstanceNumber) for p in series]
    assert [p.name for p in pngs] == [f"IM{n:05d}.png" for n in range(1, len(series) + 1)]
    for png, number in zip(pngs, sorted(order)):
        rgb = np.asarray(Image.open(png).convert("RGB"))
        assert rgb.shape == (SIZE, SIZE, 3)
        red = (rgb[..., 0] == 255) & (rgb[..., 1] == 40) & (rgb[..., 2] == 40)
        assert red.any()
        assert (red <= marked(number)).all()  # the outline lies on the mask's edge
        gray = ~red
        assert (rgb[gray][:, 0] == rgb[gray][:, 1]).all()


def test_a_broken_file_fails_and_the_rest_is_written(tmp_path):
    paths = write_series(tmp_path / "in", (1, 2, 3))
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    broken, = write_series(tmp_path / "in", (4,), uid=uid)  # the same series, its own UID
    data = broken.read_bytes()
    broken.write_bytes(data[:len(data) - 3000])  # pixel data cut short
    report = run([tmp_path / "in"], tmp_path / "out", annotate=True)
    assert [p for p, _ in report.failures] == [broken]
    found = objects(report)
    assert len(found["seg"]) == 1 and len(found["sr"]) == 1
    (path, seg), = found["seg"]
    assert seg.NumberOfFrames == 3
    sources = [pydicom.dcmread(p) for p in paths]
    assert seg_masks(path, sources).shape[0] == 3
    assert report.images == 3


def test_a_rerun_skips_and_inputs_are_unchanged(series, tmp_path):
    before = snapshot(series)
    out = tmp_path / "out"
    first = run(series, out, annotate=True, preview=True)
    assert first.ok and len([p for p in first.written if p.suffix == ".dcm"]) == 2
    written = snapshot([out])
    model = Segmenter()
    again = segment_series(series, model, out, progress=False, annotate=True)
    assert again.ok, again.failures
    assert again.written == [] and sorted(again.skipped) == sorted(first.written)
    assert model.calls == 0  # the written objects are found before the model runs
    assert again.images == 0 and again.counts == []
    assert snapshot([out]) == written
    assert snapshot(series) == before
    # Other settings are another run: their own objects, beside the first.
    other = run(series, out, fractional=True)
    assert other.written and not set(other.written) & set(first.written)


def test_patient_attributes_stay_where_they_belong(series, tmp_path, caplog):
    """The SEG and SR carry the patient module, and a patient value nowhere else: not in
    another element, a preview, a log line or the report."""
    caplog.set_level(logging.DEBUG)
    report = run(series, tmp_path / "out", annotate=True, preview=True)
    assert report.ok
    source = pydicom.dcmread(series[0])
    outputs = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert len(outputs) == 2 + len(series)
    for path in outputs:
        raw = path.read_bytes()
        if path.suffix == ".png":
            for value in SENTINELS.values():
                assert value.encode() not in raw
            continue
        ds = pydicom.dcmread(path)
        for keyword in SENTINELS:
            assert ds.get(keyword) == source.get(keyword), (path.name, keyword)
        assert sorted(sentinel_elements(ds)) == sorted(SENTINELS), path.name
        for value in SENTINELS.values():
            assert raw.count(value.encode()) == 1, (path.name, value)
    assert_no_identifiers(caplog.text)
    assert_no_identifiers(json.dumps({"written": [str(p) for p in report.written],
                                      "failures": [[str(p), m] for p, m in report.failures],
                                      "counts": report.counts}))


@pytest.mark.parametrize("fractional", [False, True], ids=["binary", "fractional"])
def test_seg_and_sr_pass_dciodvfy_and_dsrdump(series, tmp_path, fractional):
    require_tools()
    report = run(series, tmp_path / "out", annotate=True, fractional=fractional)
    assert report.ok and len(report.written) == 2
    source_errors = set().union(*(dciodvfy_errors(p) for p in series))
    for path in report.written:
        new = dciodvfy_errors(path) - source_errors
        assert not new, f"{path.name}: {new}"
    require("dcmtk")
    (sr_path, _), = objects(report)["sr"]
    result = run_tool("dsrdump", str(sr_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_fractional_annotated_seg_holds_only_what_the_report_lists(series, tmp_path):
    """segment_slice: "the SEG holds what the report lists: regions too small are not". With
    ``fractional`` the SEG is the probability, which must then be cut to the candidates too.

    Fails today: seg_dataset writes Slice.probability unrestricted when fractional, so the
    speck on slice 3 (no candidate, not in the SR) is in the SEG at probability 0.9."""
    report = run(series, tmp_path / "out", annotate=True, fractional=True)
    assert report.ok, report.failures
    (path, _), = objects(report)["seg"]
    sources = sorted((pydicom.dcmread(p) for p in series), key=lambda s: int(s.InstanceNumber))
    values = hd.seg.segread(path).get_pixels_by_source_instance(
        [s.SOPInstanceUID for s in sources], rescale_fractional=True)[..., 0]
    for frame, source in zip(values, sources):
        number = int(source.InstanceNumber)
        listed = disk(*LESIONS[number]) if number in LESIONS else np.zeros((SIZE, SIZE), bool)
        assert not frame[~listed].any(), f"slice {number}: probability outside the candidates"
        np.testing.assert_allclose(frame[listed], PROBABILITY, atol=0.5 / 255)


def test_a_part_that_cannot_be_one_object_fails_before_the_model_runs(tmp_path):
    paths = write_series(tmp_path / "in", (1, 2))
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.PixelSpacing
        ds.save_as(path)
    model = Segmenter()
    report = segment_series(paths, model, tmp_path / "out", progress=False, annotate=True)
    assert model.calls == 0 and not report.written
    assert sorted(p for p, _ in report.failures) == sorted(paths)
    assert "no Pixel Spacing" in report.failures[0][1]


def test_a_fixed_file_gives_a_new_complete_seg(tmp_path):
    paths = write_series(tmp_path / "in", (1, 2, 3))
    good = paths[2].read_bytes()
    paths[2].write_bytes(good[:400])  # truncated: fails, the other two are segmented
    first = run(paths, tmp_path / "out")
    assert [p for p, _ in first.failures] == [paths[2]] and len(first.written) == 1
    paths[2].write_bytes(good)
    again = run(paths, tmp_path / "out")
    assert again.ok and len(again.written) == 1 and again.written != first.written
    seg = pydicom.dcmread(again.written[0])
    assert int(seg.NumberOfFrames) == 3
