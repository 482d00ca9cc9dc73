"""The site evaluation: slices through the scan chain with lesions drawn in, the figures per
series and overall, the panels, and the command line around it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("skimage")

from scanside.cli import main  # noqa: E402
from scanside.training import ctsim, site, siteeval  # noqa: E402

from .site_data import write_series  # noqa: E402


def flat_slice(size: int = 160) -> np.ndarray:
    """A large flat soft-tissue disk in air: room for lesions."""
    yy, xx = np.mgrid[0:size, 0:size]
    hu = np.full((size, size), -1000.0, np.float32)
    hu[np.hypot(yy - size / 2, xx - size / 2) < size * 0.45] = 40.0
    return hu


def test_a_slice_is_scanned_at_each_level_with_lesions_and_cropped_to_the_object():
    hu = np.pad(flat_slice(), ((0, 0), (30, 30)), constant_values=-1000.0)  # not square
    pairs = siteeval.scan_slice(("s01-x", 3, hu, 0.8, (20.0, 60.0), 7, 3.0))
    assert [p.noise_hu for p in pairs] == [20.0, 60.0]
    for pair in pairs:
        assert pair.measured_hu == pytest.approx(pair.noise_hu, rel=0.15)
        # cropped: the 30 px of air each side are gone, a margin of air is kept
        assert pair.full.shape[1] < hu.shape[1] - 30 and pair.full.shape == pair.low.shape
        assert (pair.full[:, :4] < -900).all()
    lesions = pairs[0].phantom.lesions
    assert lesions, "a flat disk of this size gets lesions at 3 per 128^2 px"
    for les in lesions:
        assert siteeval.LESION_RADIUS_PX[0] <= les.radius <= siteeval.LESION_RADIUS_PX[1]
        assert siteeval.LESION_CONTRAST_HU[0] <= abs(les.contrast_hu) <= siteeval.LESION_CONTRAST_HU[1]
        # the drawn disk is where the record says, in the cropped frame
        y, x = int(round(les.y)), int(round(les.x))
        assert pairs[0].phantom.hu[y, x] == pytest.approx(40.0 + les.contrast_hu)


def test_a_slice_of_air_is_left_out_with_the_reason():
    reason = siteeval.scan_slice(("s01-x", 0, np.full((64, 64), -1000.0, np.float32), 0.8,
                                  (20.0,), 0, 0.0))
    assert isinstance(reason, str) and "no tissue" in reason


def test_the_figures_per_series_and_overall_and_the_panels(tmp_path):
    write_series(tmp_path / "scans" / "a", (1, 2), size=96)
    write_series(tmp_path / "scans" / "b", (3,), size=96)
    scans = site.read_scans([tmp_path / "scans"], echo=lambda _: None)
    result = siteeval.evaluate_site(scans, noise=(20.0, 80.0), bm3d=False, workers=1,
                                    echo=lambda _: None, panels=tmp_path / "out")
    assert [row["noise_hu"] for row in result["overall"]] == [20.0, 80.0]
    assert [row["slices"] for row in result["overall"]] == [3, 3]
    assert {(row["series"], row["slices"]) for row in result["series"]} == {
        (scans.series[0].name, 2), (scans.series[1].name, 1)}
    for row in result["overall"]:
        methods = row["methods"]
        assert list(methods) == ["low-dose input", "built-in"]
        # the built-in model removes noise on phantoms like its training's
        assert methods["built-in"]["psnr_db"] > methods["low-dose input"]["psnr_db"] + 2
        assert np.isfinite(methods["built-in"]["hu_bias_mean"])
    assert result["seconds_per_slice"]["built-in"] > 0
    assert result["panels"] == ["panel-20hu.png", "panel-80hu.png"]
    from PIL import Image

    panel = Image.open(tmp_path / "out" / "panel-20hu.png")
    assert panel.width == 3 * panel.height or panel.width > 2 * panel.height  # input|model|ref
    siteeval.write_report(result, tmp_path / "out")
    stored = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert stored["overall"][0]["methods"]["built-in"]["psnr_db"] == pytest.approx(
        result["overall"][0]["methods"]["built-in"]["psnr_db"])
    text = (tmp_path / "out" / "evaluation.txt").read_text()
    assert scans.series[0].name in text and "per series" in text
    assert str(tmp_path) not in json.dumps(stored) + text  # no path in the report


def test_lesions_are_scored_by_size_on_real_like_backgrounds(tmp_path):
    scans = site.SiteScans([site.SiteSeries(1, "abcd1234", 1, {"pixel_mm": 0.8},
                                            [site.SiteSlice(flat_slice(192), 0.8, 0)])], [])
    result = siteeval.evaluate_site(scans, noise=(20.0,), bm3d=False, workers=1, lesions=4.0,
                                    echo=lambda _: None)
    s = result["overall"][0]["methods"]["built-in"]
    assert s["lesions"] >= 2 and [b["radius_px"] for b in s["lesion_contrast_by_radius"]] == [
        list(b) for b in siteeval.SIZE_BINS]
    assert 0 <= s["lesions_lost"] <= 1


def test_bm3d_is_tuned_per_level_when_installed():
    pytest.importorskip("bm3d")
    pairs = siteeval.scan_slice(("s01-x", 0, ctsim.make_phantom(5, 64).hu, 0.8, (20.0, 80.0), 1, 0.0))
    tuned = siteeval.tune_bm3d(pairs, (20.0, 80.0), grid=(1.0, 2.5), echo=lambda _: None)
    assert [f for _, f in tuned.factors] in ([1.0, 2.5], [2.5, 2.5], [1.0, 1.0], [2.5, 1.0])
    assert len(tuned.factors) == 2


def test_bm3d_runs_the_profile_asked_for_and_says_which():
    pytest.importorskip("bm3d")
    from scanside.training import evaluate

    pair = siteeval.scan_slice(("s01-x", 0, ctsim.make_phantom(5, 64).hu, 0.8, (40.0,), 1, 0.0))[0]
    noise = evaluate.oracle_noise(pair.low, pair.full)
    outputs = {p: evaluate.bm3d_filter(pair.low, 2.5, noise, p) for p in evaluate.BM3D_PROFILES}
    assert not np.array_equal(outputs["lc"], outputs["np"])  # the profile reaches the library
    scores = {p: evaluate.psnr(pair.full, out) for p, out in outputs.items()}
    assert min(scores.values()) > evaluate.psnr(pair.full, pair.low) + 2
    assert abs(scores["lc"] - scores["np"]) < 1.0
    tuned = siteeval.tune_bm3d([pair], (40.0,), grid=(2.5,), profile="lc", echo=lambda _: None)
    assert tuned.profile == "lc" and "profile lc" in tuned.label()
    assert "profile" not in evaluate.TunedBM3D(tuned.factors).label()  # np, as before


def test_a_model_level_with_fast_bm3d_is_told_to_check_against_the_normal_profile():
    def result(profile, model_db):
        row = {"noise_hu": 20.0, "slices": 1, "measured_noise_hu": 20.0, "series": "all",
               "methods": {name: {"psnr_db": db, "ssim": 0.9} for name, db in (
                   (siteeval.METHOD_INPUT, 40.0), ("adapted", model_db), ("bm3d", 44.39))}}
        return {"bm3d_profile": profile, "overall": [row]}

    assert siteeval.close_to_bm3d(result("lc", 44.45)) == ["adapted at 20 HU"]
    assert siteeval.close_to_bm3d(result("lc", 44.60)) == []  # clear of it
    assert siteeval.close_to_bm3d(result("np", 44.45)) == []  # the normal profile: no doubt


def test_an_unknown_bm3d_profile_is_refused_before_any_work(tmp_path):
    from scanside.errors import InputError

    write_series(tmp_path / "a", (1,), size=64)
    scans = site.read_scans([tmp_path / "a"])
    with pytest.raises(InputError, match="bm3d_profile: 'fast' is not one of np, lc"):
        siteeval.evaluate_site(scans, bm3d_profile="fast", workers=1, echo=lambda _: None)


def test_cli_site_flags_need_on_and_synthetic_flags_refuse_it(tmp_path, capsys):
    assert main(["models", "evaluate", "--noise", "20"]) == 2
    assert "--noise: for a site's own scans; add --on SCANS" in capsys.readouterr().err
    assert main(["models", "evaluate", "--bm3d-profile", "np"]) == 2
    assert "--bm3d-profile: for a site's own scans" in capsys.readouterr().err
    assert main(["models", "evaluate", "--on", str(tmp_path), "--skip", "bm3d",
                 "--bm3d-profile", "np"]) == 2
    assert "--bm3d-profile: BM3D is left out (--skip bm3d)" in capsys.readouterr().err
    write_series(tmp_path / "a", (1,), size=64)
    assert main(["models", "evaluate", "--on", str(tmp_path / "a"), "--pairs", "3"]) == 2
    assert "--pairs: for the synthetic test set" in capsys.readouterr().err
    assert main(["models", "evaluate", "--on", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_cli_evaluate_on_writes_the_report(tmp_path, capsys):
    write_series(tmp_path / "scans", (1, 2), size=64)
    code = main(["models", "evaluate", "--on", str(tmp_path / "scans"), "--noise", "40",
                 "--skip", "bm3d", "--workers", "1", "--out", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    assert "added noise 40 HU" in out and "built-in" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "evaluation.json", "evaluation.txt", "panel-40hu.png"]
