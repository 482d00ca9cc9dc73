"""Adapting the built-in model to a site: the split, the plan, and (slow) the whole command on
a tiny synthetic site: a model folder that loads like any engine, holds no identifier of the
inputs, resumes, and stops with exit 3 on a full disk."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

pytest.importorskip("skimage")

from scanside.errors import InputError  # noqa: E402
from scanside.training import adapt  # noqa: E402
from scanside.training.site import SiteScans, SiteSeries, SiteSlice  # noqa: E402

from .site_data import write_series  # noqa: E402


def series(index: int, slices: int) -> SiteSeries:
    hu = np.zeros((8, 8), np.float32)
    return SiteSeries(index, f"k{index:07d}", slices, {"pixel_mm": 0.8},
                      [SiteSlice(hu, 0.8, k) for k in range(slices)])


def test_whole_series_are_held_out_never_slices_of_one_on_both_sides():
    scans = SiteScans([series(i, 4) for i in range(1, 11)], [])
    train, held, how = adapt.split_series(scans, 0.2, seed=3)
    assert len(held) == 2 and len(train) == 8 and "2 of 10 series" in how and "studies" in how
    assert not {s.key for s in train} & {s.key for s in held}
    assert adapt.split_series(scans, 0.2, seed=3)[1] == held  # reproducible from the seed
    others = [adapt.split_series(scans, 0.2, seed=s)[1] for s in range(4, 10)]
    assert any([s.key for s in h] != [s.key for s in held] for h in others)
    train, held, _ = adapt.split_series(SiteScans([series(1, 5), series(2, 5)], []), 0.9, 0)
    assert len(train) == 1 and len(held) == 1  # at least one series trains


def test_one_series_holds_out_its_last_slices_after_a_gap():
    train, held, how = adapt.split_series(SiteScans([series(1, 10)], []), 0.2, 0)
    assert [s.position for s in held[0].slices] == [8, 9]
    assert [s.position for s in train[0].slices] == list(range(7))  # slice 7 is the gap
    assert "optimistic" in how
    train, held, _ = adapt.split_series(SiteScans([series(1, 2)], []), 0.2, 0)  # a phantom scan
    assert len(train[0].slices) == 1 and len(held[0].slices) == 1
    train, held, how = adapt.split_series(SiteScans([series(1, 1)], []), 0.2, 0)
    assert held == [] and "unmeasured" in how
    assert adapt.split_series(SiteScans([series(1, 4), series(2, 4)], []), 0.0, 0)[1] == []


def test_a_bad_holdout_is_refused_by_name():
    with pytest.raises(InputError, match=r"holdout: 1\.5 is not in \[0, 1\)"):
        adapt.split_series(SiteScans([series(1, 4)], []), 1.5, 0)


def test_steps_grow_with_the_data_within_bounds():
    assert adapt.plan_steps(2) == 300
    assert adapt.plan_steps(60) == 500
    assert adapt.plan_steps(10_000) == 800
    assert adapt.patches_per_dose(512, 128) == 8 and adapt.patches_per_dose(96, 128) == 1


# -- the whole command, on a tiny site ----------------------------------------------------
SENTINEL = "ZQXSENTINEL"
SENTINEL_UID = "1.2.826.0.1.3680043.8.498.7777777"
# Every text attribute the inputs carry, with a sentinel. Manufacturer, scanner model and
# kernel are the facts the card reports by design (not patient attributes): kept real.
PLANTED = {
    "PatientName": f"{SENTINEL}^NAME", "PatientID": f"{SENTINEL}ID", "PatientBirthDate": "19010203",
    "PatientSex": "O", "StudyDate": "19020304", "StudyTime": "010203", "SeriesDate": "19020304",
    "AccessionNumber": f"{SENTINEL}ACC", "StudyID": f"{SENTINEL}SID",
    "ReferringPhysicianName": f"{SENTINEL}^REF", "InstitutionName": f"{SENTINEL} HOSPITAL",
    "InstitutionAddress": f"{SENTINEL} STREET", "StationName": f"{SENTINEL}STN",
    "OperatorsName": f"{SENTINEL}^OP", "StudyDescription": f"{SENTINEL} STUDY",
    "SeriesDescription": f"{SENTINEL} SERIES", "ProtocolName": f"{SENTINEL} PROTOCOL",
    "DeviceSerialNumber": f"{SENTINEL}SN", "BodyPartExamined": "CHEST",
    "StudyInstanceUID": f"{SENTINEL_UID}.1", "FrameOfReferenceUID": f"{SENTINEL_UID}.2",
    "Manufacturer": "Acme", "ManufacturerModelName": "Acme CT 64", "ConvolutionKernel": "SOFT",
    "KVP": "120",
}
NEEDLES = [SENTINEL, SENTINEL_UID, "19010203", "19020304"]


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    for k, (name, seeds) in enumerate((("a", (1, 2)), ("b", (3,)), ("c", (4,)))):
        write_series(root / "scans" / name, seeds, size=96, uid_root=f"{SENTINEL_UID}.3{k}",
                     **PLANTED)
    return root


def every_byte(folder) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


@pytest.mark.slow
def test_adapt_end_to_end_without_identifiers_and_resumable(tiny_site, capsys):
    pytest.importorskip("torch")
    from scanside import Pipeline
    from scanside.cli import main

    scans, out = tiny_site / "scans", tiny_site / "model"
    args = ["models", "adapt", str(scans), "--out", str(out), "--steps", "8", "--holdout",
            "0.34", "--skip", "bm3d", "--workers", "1"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "below 50 the result may fit these slices" in printed.out
    assert "1 of 3 series held out" in printed.out
    # the folder loads as an engine, like any other
    pipe = Pipeline.load(out)
    assert pipe.manifest.provenance["derived_from_patient_images"] is True
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    assert pipe.enhance(image).shape == (64, 64)
    card = json.loads((out / "card.json").read_text())
    assert card["data"]["all"]["scanner_models"] == ["Acme CT 64"]
    assert card["data"]["all"]["kernels"] == ["SOFT"]
    assert [h["step"] for h in card["training"]["validation"]] == [0, 8]  # the start, the end
    assert card["training"]["chosen_step"] in (0, 8)
    rows = card["evaluation"]["overall"]
    assert [r["noise_hu"] for r in rows] == [20.0, 40.0, 80.0]
    assert list(rows[0]["methods"]) == ["low-dose input", "built-in", "adapted"]
    assert "keep it on site" in (out / "README.md").read_text()
    assert main(["info", str(out)]) == 0
    assert "provenance  adapted on a site's own patient scans" in capsys.readouterr().out
    # no identifier anywhere in what was written, nor in what was printed
    written = every_byte(out)
    for needle in NEEDLES:
        assert needle.encode() not in written, needle
        assert needle not in printed.out + printed.err, needle
    # the same command resumes: nothing is trained again
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "unet step" not in again and "engine: " in again and "is up to date" in again
    # other options on the same folder are refused, not mixed in
    assert main(args[:-2] + ["--workers", "1", "--seed", "5"]) == 2
    assert "holds an adaptation of other data or settings" in capsys.readouterr().err


@pytest.mark.slow
def test_a_full_disk_stops_with_exit_3_and_the_same_command_resumes(tiny_site, monkeypatch,
                                                                    capsys):
    pytest.importorskip("torch")
    from scanside.cli import main
    from scanside.training import train

    out = tiny_site / "full"
    args = ["models", "adapt", str(tiny_site / "scans" / "a"), "--out", str(out), "--steps",
            "4", "--skip", "bm3d", "--workers", "1"]
    real_save = train.Checkpoints.save

    def full(self, stage, state):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train.Checkpoints, "save", full)
    assert main(args) == 3
    assert "the disk is full" in capsys.readouterr().err
    assert list((out / "train" / "slices").glob("*.npz"))  # the data made so far is kept
    monkeypatch.setattr(train.Checkpoints, "save", real_save)
    assert main(args) == 0
    assert "data: simulating 0 of" in capsys.readouterr().out  # resumed, not redone
    assert (out / "engine" / "manifest.json").is_file()


def test_a_full_disk_is_recognised_through_the_libraries_that_wrap_it():
    class SafetensorError(Exception):
        pass

    assert adapt.disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert adapt.disk_full(SafetensorError("Error while serializing: I/O error: No space left "
                                           "on device (os error 28)"))
    assert not adapt.disk_full(SafetensorError("invalid header"))
    assert not adapt.disk_full(OSError(errno.EACCES, "Permission denied"))


def test_series_of_one_study_stay_on_one_side():
    scans = SiteScans([series(i, 3) for i in range(1, 7)], [])
    for s, study in zip(scans.series, "aabbcc"):
        s.group = study  # two reconstructions per study
    for seed in range(5):
        train, held, _ = adapt.split_series(scans, 0.34, seed)
        assert not {s.group for s in train} & {s.group for s in held}
        assert len(held) == 2


def test_the_checkpoint_that_loses_at_any_level_is_not_chosen(tmp_path):
    """Step 200 has the best mean but is worse than the start at 20 HU: step 100 ships."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    full = np.zeros((16, 16), np.float32)
    pairs = [SimpleNamespace(low=full, full=full, noise_hu=level) for level in (20.0, 80.0)]
    errors = {0: {20.0: 4.0, 80.0: 8.0}, 100: {20.0: 3.9, 80.0: 6.0}, 200: {20.0: 5.0, 80.0: 2.0}}
    class Enhancer:  # train.Enhancer's interface: an error of a known size per level
        def __init__(self, step):
            self.unet = torch.nn.Linear(1, 1)
            torch.nn.init.constant_(self.unet.weight, float(step))
            self.errors = iter(errors[step][p.noise_hu] for p in pairs)

        def __call__(self, image, seed=0):
            return np.full(image.shape, next(self.errors) / 1000.0, np.float32)

    held = adapt.HeldOut(tmp_path, pairs, echo=lambda _: None)
    for step in errors:
        held(step, Enhancer(step))
    assert [h["qualifies"] for h in held.history] == [True, True, False]
    assert held.chosen_step() == 100
    model = torch.nn.Linear(1, 1)
    assert held.best(model).weight.item() == 100.0


@pytest.mark.slow
def test_the_views_asked_for_become_the_models_default_and_the_cards(tiny_site, capsys):
    pytest.importorskip("torch")
    from scanside import Pipeline
    from scanside.cli import main

    out = tiny_site / "views"
    args = ["models", "adapt", str(tiny_site / "scans"), "--out", str(out), "--steps", "4",
            "--holdout", "0.34", "--skip", "bm3d", "--workers", "1", "--ensemble", "2"]
    assert main(args) == 0
    capsys.readouterr()
    pipe = Pipeline.load(out)
    assert pipe.manifest.enhance_defaults["ensemble"] == 2
    assert pipe.manifest.enhance_defaults["strength"] == 0.05  # the rest: the base model's own
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["ensemble"] == 2
    assert list(card["evaluation"]["overall"][0]["methods"]) == [
        "low-dose input", "built-in (2 views)", "adapted (2 views)"]
    assert all(e["sampling"]["ensemble"] == 2 for e in card["evaluation"]["engines"].values())
    assert "- views: 2 rotated/mirrored views averaged by default" in (out / "README.md").read_text()
    # resuming with other views is refused: the model's default would not be what was asked
    assert main(args[:-1] + ["4"]) == 2
    assert "ensemble (views) differ; ensemble (views): started with 2, now 4" in \
        capsys.readouterr().err


def test_views_that_no_model_takes_are_refused_by_name(tmp_path):
    from scanside.training.site import SiteScans

    with pytest.raises(InputError, match="ensemble: 3 is not one of"):
        adapt.adapt(SiteScans([], []), tmp_path / "m", ensemble=3)
    with pytest.raises(InputError, match="bm3d_profile: 'fast'"):
        adapt.adapt(SiteScans([], []), tmp_path / "m", bm3d_profile="fast")
    assert not (tmp_path / "m").exists()
