"""The command line as a new user meets it: each bad input gets one clear message, exit code 2
and no output file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scanside.cli import main
from scanside.runtime.default import default_engine_dir


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(path)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_enhance_png_writes_same_bit_depth(tiny_engine, png, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "enhance", png, "--engine", tiny_engine, "--out", out,
                          "--steps", "4", "--strength", "0.5")
    assert code == 0
    result = Image.open(out / "in_enhanced.png")
    assert result.mode == "L" and result.size == (64, 64)
    assert "1 file(s) written, 0 failed" in stdout


def test_enhance_npy_to_file(tiny_engine, tmp_path, capsys):
    src = tmp_path / "x.npy"
    np.save(src, np.full((64, 64), 0.25, np.float32))
    code, _, _ = run(capsys, "enhance", src, "--engine", tiny_engine, "--out", tmp_path / "y.npy",
                     "--steps", "3", "--strength", "0.7")
    assert code == 0
    assert np.load(tmp_path / "y.npy").shape == (64, 64)


def test_generate(tiny_engine, tmp_path, capsys):
    code, _, _ = run(capsys, "generate", "--engine", tiny_engine, "--prompt", "a lung",
                     "--steps", "3", "--out", tmp_path / "g.png", "--scheduler", "euler_a")
    assert code == 0
    assert Image.open(tmp_path / "g.png").size == (64, 64)


def test_info(tiny_engine, capsys):

    code, out, _ = run(capsys, "info", tiny_engine, "--verify")
    assert code == 0
    assert "unet" in out and "fp32" in out and "verified" in out
    assert "attention   plain" in out and "affine" not in out  # SD's VAE mixes pixels
    code, out, _ = run(capsys, "info", tiny_engine, "--json")
    assert json.loads(out)["magic"] == "scanside-engine"
    code, out, _ = run(capsys, "info", default_engine_dir())
    assert "a per-pixel affine map" in out


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--strength", "0"], "argument --strength: 0.0 is outside (0, 1]"),
        (["--strength", "1.5"], "1.5 is outside (0, 1]"),
        (["--steps", "0"], "argument --steps: 0 is not a positive integer"),
        (["--strength", "abc"], "argument --strength: invalid strength_arg value: 'abc'"),
        (["--scheduler", "heun"], "invalid choice: 'heun'"),
        (["--consistency", "32:2"], "argument --consistency: '32:2' is neither PX >= 0 nor PX:MAX"),
        (["--consistency", "-1"], "'-1' is neither PX >= 0 nor PX:MAX with 0 < PX < MAX"),
        (["--consistency", "a:b"], "'a:b' is neither PX >= 0 nor PX:MAX"),
    ],
)
def test_bad_arguments(tiny_engine, png, tmp_path, capsys, extra, fragment):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["enhance", str(png), "--engine", str(tiny_engine), "--out", str(out), *extra])
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err
    assert not out.exists()


def test_consistency_takes_a_scale_or_a_band():
    from scanside.cli.options import consistency_arg

    assert consistency_arg("8") == 8.0 and consistency_arg("0") == 0.0
    assert consistency_arg("2:32") == [2.0, 32.0]


def test_missing_engine(png, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "enhance", png, "--engine", tmp_path / "none", "--out", out)
    assert code == 2
    assert "no such engine directory" in err and "scanside export" in err
    assert not out.exists()


def test_foreign_engine(png, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.onnx").write_bytes(b"x")
    code, _, err = run(capsys, "info", foreign)
    assert code == 2 and "not a scanside engine directory" in err


def test_old_manifest_version(tiny_engine, tmp_path, capsys):
    engine = shutil.copytree(tiny_engine, tmp_path / "engine")
    manifest = json.loads((engine / "manifest.json").read_text())
    manifest["format_version"] = 0
    (engine / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run(capsys, "info", engine)
    assert code == 2 and "format version 0" in err and "scanside export" in err


def test_batch_goes_on_past_bad_files(tiny_engine, png, tmp_path, capsys):
    wrong_shape = tmp_path / "tiny.npy"
    np.save(wrong_shape, np.zeros((4, 200), np.float32))  # wider than the engine is fine (tiles)
    wrong_dtype = tmp_path / "ints.npy"
    np.save(wrong_dtype, np.zeros((64, 64), np.int64))
    not_png = tmp_path / "fake.png"
    not_png.write_text("hello")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "enhance", wrong_shape, png, wrong_dtype, not_png,
                            "--engine", tiny_engine, "--out", out, "--steps", "4")
    assert code == 2
    assert "1 file(s) written, 3 failed" in stdout
    assert "4x200 pixels; images need at least 8x8" in err
    assert "dtype int64" in err
    assert "not a readable PNG" in err
    assert sorted(p.name for p in out.iterdir()) == ["in_enhanced.png"]  # no partial files


def test_too_little_strength_for_the_steps(tiny_engine, png, tmp_path, capsys):
    out = tmp_path / "o.png"
    code, _, err = run(capsys, "enhance", png, "--engine", tiny_engine, "--out", out,
                       "--steps", "3", "--strength", "0.3")
    assert code == 2 and "leaves no denoising step" in err
    assert not out.exists()


def test_never_writes_over_existing_output(tiny_engine, png, tmp_path, capsys):
    target = tmp_path / "taken.png"
    target.write_bytes(b"keep me")
    code, _, err = run(capsys, "enhance", png, "--engine", tiny_engine, "--out", target)
    assert code == 2 and "already exists" in err
    assert target.read_bytes() == b"keep me"


def test_output_equal_to_input_is_refused(tiny_engine, png, capsys):
    before = png.read_bytes()
    code, _, err = run(capsys, "enhance", png, "--engine", tiny_engine, "--out", png,
                       "--overwrite", "--steps", "2")
    assert code == 2 and "replace the input" in err
    assert png.read_bytes() == before


def test_export_refuses_a_non_model_folder(tmp_path, capsys):
    code, _, err = run(capsys, "export", tmp_path, "--out", tmp_path / "e")
    assert code == 2 and "not a diffusers Stable Diffusion folder" in err
    assert not (tmp_path / "e").exists()


def test_help_on_every_command(capsys):
    for command in (["export"], ["generate"], ["enhance"], ["info"], ["demo"], ["models", "build"],
                    ["models", "train-default"], ["models", "evaluate"],
                    ["models", "build-tiny-vae"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: scanside" in capsys.readouterr().out


def test_train_default_refuses_an_unknown_source_and_passes_scene_counts(tmp_path, capsys,
                                                                        monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "train-default", str(tmp_path), "--scenes", "liver=3"])
    assert exit_info.value.code == 2
    assert "'liver=3': expected SOURCE=COUNT with SOURCE one of" in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr("scanside.training.train.train_default",
                        lambda out, settings, device: seen.update(settings=settings,
                                                                  device=device) or out)
    main(["models", "train-default", str(tmp_path), "--scenes", "chest=5", "--scenes",
          "natural=0", "--tune-noise-power", "0", "--anatomy-lesions", "2",
          "--tune-scenes", "leaves=100", "--tune-noise-scale", "0.35", "1.4",
          "--scenes", "tissue=100", "--refine-t", "4", "--batch", "32", "--device", "cuda",
          "--lesion-weight", "400", "--tune-lr", "5e-5"])
    counts = dict(seen["settings"].scenes)
    assert counts["tissue"] == 100 and seen["settings"].refine_t == 4
    assert seen["settings"].unet_batch == 32 and seen["device"] == "cuda"
    assert seen["settings"].lesion_weight == 400.0 and seen["settings"].tune_lr == 5e-5
    assert seen["settings"].tune_scenes == (("leaves", 100),)
    assert seen["settings"].tune_noise_scale == (0.35, 1.4)
    assert counts["chest"] == 5 and "natural" not in counts and counts["head"] == 64
    assert seen["settings"].noise_weight_power == 0.0
    assert seen["settings"].anatomy_lesions == 2.0
    assert main(["models", "train-default", str(tmp_path), "--tune-noise-scale", "1.4",
                 "0.35"]) != 0
    assert "--tune-noise-scale 1.4 0.35: give two factors 0 < LO <= HI" in capsys.readouterr().err


HEAD_GAIN_DB = 5.0  # measured +6.41 dB (37.19 -> 43.60 dB, run 25) on the demo's noise draw


@pytest.mark.slow
def test_demo_denoises_and_writes_derived_dicom(tmp_path, capsys):
    import re

    import pydicom

    code, out, _ = run(capsys, "demo", "--workdir", tmp_path)
    assert code == 0
    low, enhanced = map(float, re.search(r"low-dose ([\d.]+) dB -> enhanced ([\d.]+) dB", out).groups())
    assert enhanced >= low + 5  # measured +6.1 dB on the phantom (37.23 -> 43.34); see test_default_model
    written = sorted((tmp_path / "enhanced").rglob("*.dcm"))
    assert len(written) == 3  # the simulated slice, CT_small and the 512 px head, each a series
    for path in written:
        ds = pydicom.dcmread(path)
        assert ds.ImageType[0] == "DERIVED" and path.with_suffix(".png").is_file()
    picture = Image.open(tmp_path / "low_dose__enhanced__full_dose.png")
    assert picture.size == (3 * 128 * 3, 128 * 3)  # three panels, drawn 3x
    # Real anatomy at a clinical size, never trained on: better than its low-dose scan.
    head_low, head_enhanced = map(float, re.search(
        r"reference: low-dose ([\d.]+) dB -> enhanced ([\d.]+) dB", out).groups())
    assert head_enhanced >= head_low + HEAD_GAIN_DB
    assert Image.open(tmp_path / "head_low_dose__enhanced__reference.png").size == (3 * 512, 512)


def test_enhance_without_engine_uses_the_built_in_model(tmp_path, capsys):
    src = tmp_path / "slice.png"
    Image.fromarray(np.full((128, 128), 128, np.uint8)).save(src)
    code, out, _ = run(capsys, "enhance", src, "--out", tmp_path / "out.png")
    assert code == 0 and (tmp_path / "out.png").is_file()


def test_enhance_ensemble_reaches_the_dicom_provenance(tmp_path, capsys):
    import pydicom

    source = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    code, _, _ = run(capsys, "enhance", source, "--out", tmp_path, "--ensemble", "2")
    assert code == 0
    (written,) = tmp_path.rglob("*.dcm")
    assert "ensemble of 2 views" in pydicom.dcmread(written).DerivationDescription
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, "enhance", source, "--out", tmp_path / "x", "--ensemble", "3")
    assert exit_info.value.code == 2 and "--ensemble" in capsys.readouterr().err


@pytest.mark.slow
def test_export_with_a_tiny_vae_and_info_shows_its_cost(tiny_model, tmp_path, capsys):
    taesd, engine = tmp_path / "taesd", tmp_path / "engine"
    assert main(["models", "build-tiny-vae", "tiny", str(taesd), "--seed", "1"]) == 0
    assert main(["export", str(tiny_model), "--out", str(engine), "--tiny-vae", str(taesd),
                 "--tiny-vae-parts", "decoder"]) == 0
    capsys.readouterr()
    assert main(["info", str(engine)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("tiny VAE"))
    assert "taesd for vae_decoder: round trip" in line and "dB" in line


def test_library_errors_are_told_in_flag_names(tmp_path, capsys):
    from scanside.cli import as_flags

    assert as_flags("max_tile: 7 is not a multiple of 8") == "--max-tile: 7 is not a multiple of 8"
    assert as_flags("out_dir s3://***@b/run: cannot be written") == \
        "--out s3://***@b/run: cannot be written"
    assert as_flags("/data/a.dcm: not DICOM") == "/data/a.dcm: not DICOM"  # a path stays
    # The last messages that named flags from inside the library (the house issue's list).
    assert as_flags("address: Ray is not installed").startswith("--ray: ")
    assert as_flags("tensorrt: no GPU").startswith("--tensorrt/--trtexec-script: ")
    assert as_flags("repeat: 0, warmup: 1; need").startswith("--repeat: ")
    library = Path(__file__).resolve().parents[1] / "scanside"
    for path in library.rglob("*.py"):
        if "cli" in path.relative_to(library).parts or path.name == "__main__.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(InputError|OutputError)\(f?\"--", text), \
            f"{path.relative_to(library)}: a library message opens with a CLI flag"
    image = tmp_path / "a.npy"
    np.save(image, np.zeros((64, 64), np.float32))
    # check_output_dir (scanside.dicom.series) names out_dir; the command says --out.
    code = main(["enhance", str(tmp_path / "a.dcm"), "--out", str(tmp_path)])
    assert code == 2
    assert "--out: " in capsys.readouterr().err


def test_maps_names_are_checked_at_the_command_line(tiny_engine, png, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["enhance", str(png), "--out", str(tmp_path / "o"), "--maps", "uncertainty,edges"])
    assert exit_info.value.code == 2
    assert "edges is not a map scanside makes" in capsys.readouterr().err
    code, _, err = run(capsys, "enhance", png, "--engine", tiny_engine, "--out", tmp_path / "o",
                       "--maps", "change")
    assert code == 2 and "--maps: made for DICOM inputs" in err


def test_annotate_writes_seg_and_sr_and_segment_refuses_a_denoiser(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    code, out, err = run(capsys, "annotate", ct, "--out", tmp_path / "marks", "--report",
                         tmp_path / "report.json")
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "marks").rglob("*.dcm"))
    assert written == ["SEG01.dcm", "SR01.dcm"]
    assert "research aid" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["counts"][0]["slices"] == 1 and "candidates" in report["counts"][0]
    code, _, err = run(capsys, "segment", ct, "--engine", default_engine_dir(), "--out",
                       tmp_path / "seg")
    assert code == 2 and "an enhancement engine (task 'enhance'" in err
    mr = get_testdata_file("MR_small.dcm")
    code, _, err = run(capsys, "annotate", mr, "--out", tmp_path / "mr")
    assert code == 2 and "modality MR; this model reads CT only" in err
