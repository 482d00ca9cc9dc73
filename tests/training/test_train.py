"""Training the default model, on the tiny recipe and a handful of 32-px pairs: the folder it
writes, reproducibility from the seed, and resuming from a checkpoint mid-stage."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")

from scanside.errors import InputError  # noqa: E402
from scanside.training import train  # noqa: E402
from scanside.training.train import Settings, dihedral, train_default  # noqa: E402
from tests.system_tools import require  # noqa: E402

# One scene of each source (a head needs Debian's mricron-data: CI installs it), 32 px patches.
TINY = Settings(recipe="ct-tiny", scenes=(("head", 1), ("natural", 1), ("phantom", 2)),
                patches=(("head", 2), ("natural", 1), ("phantom", 1)), patch=32,
                unet_steps=2, tune_steps=2, unet_batch=2, checkpoint_every=1, workers=1)
UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    require("mricron-data")  # TINY's head scene; skips (or fails in CI) every test using it
    out = tmp_path_factory.mktemp("run")
    lines: list[str] = []
    return train_default(out, TINY, echo=lines.append), lines


def with_scenes(run_dir, trained):
    """``run_dir`` holding the trained fixture's simulated scenes: a run with TINY's data
    settings then trains on exactly them without simulating them again (its data stage
    skips the scenes that are there, as a resumed run does)."""
    import shutil

    shutil.copytree(trained[0].parent / "train" / "scenes", run_dir / "train" / "scenes")
    return run_dir


@pytest.mark.slow
def test_writes_an_fp16_diffusers_folder_with_its_settings(trained):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    model_dir, lines = trained
    with safe_open(model_dir / UNET, "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    assert pipe.unet.config.in_channels == 8 and pipe.vae.config.in_channels == 1
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    settings = json.loads((model_dir / "scanside.json").read_text())["enhance"]
    assert settings["prompt"] == train.PROMPT
    info = json.loads((model_dir / "training.json").read_text())
    assert info["settings"]["seed"] == 0 and info["vae_scaling_factor"] > 0
    assert any(line.startswith("unet step 4/4  loss") for line in lines)  # progress is printed
    assert any("lesion pixels x200" in line for line in lines)


@pytest.mark.slow
def test_export_carries_the_model_settings_into_the_manifest(trained, tmp_path):
    from scanside.export import export_model

    model_dir, _ = trained
    manifest = export_model(model_dir, tmp_path / "engine")
    assert manifest.enhance_defaults["prompt"] == train.PROMPT
    assert manifest.conditioning.value == "concat" and manifest.image_channels == 1


@pytest.mark.slow
def test_same_seed_same_weights_and_resume_is_exact(trained, tmp_path, monkeypatch):
    model_dir, _ = trained
    saves = {"n": 0}
    original = train.Checkpoints.save

    def interrupt_after_two_unet_steps(self, stage, state):
        original(self, stage, state)
        if stage == "unet" and state["step"] == 2:
            raise KeyboardInterrupt  # the session ending mid-stage
        saves["n"] += 1

    monkeypatch.setattr(train.Checkpoints, "save", interrupt_after_two_unet_steps)
    with pytest.raises(KeyboardInterrupt):
        train_default(with_scenes(tmp_path, trained), TINY, echo=lambda _: None)
    assert not (tmp_path / "model").exists()
    monkeypatch.setattr(train.Checkpoints, "save", original)
    lines: list[str] = []
    resumed = train_default(tmp_path, TINY, echo=lines.append)
    assert any("steps 2..4" in line for line in lines)  # it went on, did not start over
    # ... into phase 2, with phase 1's optimizer and EMA (the same bytes as one uninterrupted run)
    assert (resumed / UNET).read_bytes() == (model_dir / UNET).read_bytes()


@pytest.mark.slow
def test_other_settings_in_the_same_folder_are_refused(trained):
    model_dir, _ = trained
    other = Settings(**{**TINY.__dict__, "tune_steps": 5})
    with pytest.raises(InputError, match="other settings"):
        train_default(model_dir.parent, other, echo=lambda _: None)


@pytest.mark.slow
def test_a_run_from_a_trained_model_skips_phase_one_and_starts_at_its_weights(trained, tmp_path):
    from safetensors.torch import load_file

    model_dir, _ = trained
    lines: list[str] = []
    settings = Settings(**{**TINY.__dict__, "unet_steps": 0, "tune_steps": 1,
                           "init": str(model_dir)})
    tuned = train_default(with_scenes(tmp_path / "tuned", trained), settings, echo=lines.append)
    assert any("steps 0..1" in line for line in lines)
    before, after = load_file(str(model_dir / UNET)), load_file(str(tuned / UNET))
    # One warm-up step at 1/100 of the learning rate: the weights move, but barely.
    moved = max(float((after[k].float() - before[k].float()).abs().max()) for k in before)
    assert 0 < moved < 1e-3
    scale = lambda d: json.loads((d / "vae" / "config.json").read_text())["scaling_factor"]  # noqa: E731
    assert scale(tuned) == scale(model_dir)  # the model's latent scale, not this data's
    # Its training.json carries the training.json of the model it started from.
    info = json.loads((tuned / "training.json").read_text())
    assert info["init_training"] == json.loads((model_dir / "training.json").read_text())
    assert "init_training" not in info["init_training"]
    with pytest.raises(InputError, match="no safetensors weights"):
        train_default(tmp_path / "bad", Settings(**{**settings.__dict__, "init": str(tmp_path)}),
                      echo=lambda _: None)
    assert not (tmp_path / "bad").exists()  # refused before any scene is simulated


def test_dihedral_gives_eight_distinct_invertible_views():
    image = np.arange(16.0).reshape(4, 4)
    views = [dihedral(image, k) for k in range(8)]
    assert len({v.tobytes() for v in views}) == 8
    assert all(sorted(v.ravel()) == sorted(image.ravel()) for v in views)


@pytest.mark.slow
def test_batches_are_made_ahead_in_step_order_and_equal_made_inline(trained):
    """prefetched hands batches over in step order whatever thread finishes first, and a
    prefetched batch is the batch drawn inline: the draws depend on the step alone."""
    import time

    def slow_for_even(step):
        time.sleep(0.02 if step % 2 == 0 else 0.0)
        return step

    assert list(train.prefetched(slow_for_even, range(3, 14), threads=3)) == list(range(3, 14))
    data = {name: np.random.default_rng(1).random((6, 32, 32), dtype=np.float32)
            for name in ("low", "full")}
    data["lesions"] = data["full"] > 0.9
    made = list(train.prefetched(lambda k: train.draw_batch(data, k, TINY, (4, 32, 32)),
                                 range(4), threads=2))
    again = train.draw_batch(data, 2, TINY, (4, 32, 32))
    assert np.array_equal(made[2].noise, again.noise) and np.array_equal(made[2].low, again.low)
    assert not np.array_equal(made[1].noise, again.noise)
    assert json.loads((trained[0] / "training.json").read_text())["last_session_device"] == "cpu"


def test_a_device_torch_cannot_use_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="device cuda: this torch sees no CUDA GPU"):
        train_default(tmp_path, TINY, echo=lambda _: None, device="cuda")
    for name in ("mps", "gpu"):  # one torch knows but cannot train here, one it does not
        with pytest.raises(InputError, match=f"device {name}: expected cpu or cuda"):
            train_default(tmp_path, TINY, echo=lambda _: None, device=name)
    assert not (tmp_path / "train").exists()  # refused before anything is written


def test_batches_start_from_the_low_dose_latent_at_small_timesteps():
    from scanside.training.train import start_draws

    settings = Settings()
    from_low, t = start_draws(np.random.default_rng(0), 64, settings)
    assert 0.6 < from_low.mean() < 0.9  # low_start = 0.75
    assert (t[from_low] >= 1).all() and (t <= settings.refine_t).all() and (t >= 0).all()


def test_patches_pair_a_reference_with_its_low_dose_and_the_phantoms_lesions():
    from scanside.training.train import scene_patches

    settings = Settings(patch=64)
    out = scene_patches(("phantom", 3, settings))  # ctsim phantom of train seed 3
    assert out["low"].shape == out["full"].shape == out["lesions"].shape
    assert out["low"].shape[1:] == (64, 64) and out["lesions"].dtype == bool
    noise = (out["low"] - out["full"]) * 1000  # HU
    assert 8 < noise.std() < 150  # within the simulated 15-90 HU, scaled by anatomy
    assert np.abs(out["full"]).max() <= 1.0
    # The same job gives the same patches (a resumed run's data is the same data).
    again = scene_patches(("phantom", 3, settings))
    assert all(np.array_equal(out[k], again[k]) for k in out)


def test_every_training_source_has_a_patch_count():
    # A source without one failed in the data workers with a bare KeyError (the tissue
    # source's first run).
    from scanside.training import anatomy

    assert set(dict(Settings().patches)) == {source.value for source in anatomy.Source}


def test_a_batch_scales_each_samples_noise_and_turns_both_images_alike():
    from scanside.training.train import sample

    rng = np.random.default_rng(0)
    full = rng.standard_normal((6, 16, 16)).astype(np.float32)
    noise = rng.standard_normal((6, 16, 16)).astype(np.float32)
    data = {"full": full, "low": full + noise, "lesions": full > 1}
    low, ref, lesions = sample(data, np.random.default_rng(1), 4, Settings())
    for lo, r, les in zip(low, ref, lesions):
        i = next(i for i in range(6) for k in range(8) if np.array_equal(dihedral(full[i], k), r))
        k = next(k for k in range(8) if np.array_equal(dihedral(full[i], k), r))
        scale = (lo - r).std() / noise[i].std()
        assert 0.69 < scale < 1.41  # Settings.noise_scale
        np.testing.assert_allclose(lo - r, scale * dihedral(noise[i], k), rtol=1e-3, atol=1e-4)
        assert np.array_equal(les, dihedral(full[i] > 1, k))


def test_phase_two_can_scale_the_noise_over_its_own_range():
    from scanside.training.train import sample

    rng = np.random.default_rng(0)
    full = rng.standard_normal((6, 16, 16)).astype(np.float32)
    noise = rng.standard_normal((6, 16, 16)).astype(np.float32)
    data = {"full": full, "low": full + noise, "lesions": full > 1}
    settings = Settings(tune_noise_scale=(0.2, 0.3))
    low, ref, _ = sample(data, np.random.default_rng(1), 6, settings, None,
                         settings.tune_noise_scale)
    scales = (low - ref).reshape(6, -1).std(axis=1) / noise.reshape(6, -1).std(axis=1).mean()
    assert np.all(scales < 0.4)  # phase 1's range would give 0.7-1.4
    # the same draws of patches and views as without the override: phase 1 is unchanged
    _, ref1, _ = sample(data, np.random.default_rng(1), 6, settings)
    np.testing.assert_array_equal(ref, ref1)


def test_learning_rate_is_one_cosine_cycle():
    from scanside.training.train import cosine_lr, unet_lr

    settings = Settings(unet_steps=1000)
    assert all(unet_lr(k, settings) == cosine_lr(k, 1000, settings.unet_lr) for k in range(1000))
    assert unet_lr(99, settings) == pytest.approx(settings.unet_lr)  # warm-up done: the peak
    assert unet_lr(999, settings) < unet_lr(500, settings) < unet_lr(99, settings)


def test_phase_two_runs_its_own_cosine_after_phase_one():
    from scanside.training.train import cosine_lr, total_steps, unet_lr

    settings = Settings(unet_steps=1000, tune_steps=500)
    assert total_steps(settings) == 1500
    assert unet_lr(999, settings) == cosine_lr(999, 1000, settings.unet_lr)
    assert [unet_lr(1000 + k, settings) for k in range(500)] == [
        cosine_lr(k, 500, settings.tune_lr) for k in range(500)]


def test_the_shipped_phase_2_keeps_phase_1s_loss():
    from scanside.training.train import tuned_loss

    rng = np.random.default_rng(1)
    pred, target = (torch.from_numpy(rng.standard_normal((3, 4, 16, 16)).astype(np.float32))
                    for _ in range(2))
    lesions = torch.from_numpy(rng.random((3, 1, 16, 16)) < 0.05).float()
    w = 1 + Settings().lesion_weight * lesions
    plain = ((pred - target).pow(2) * w).mean() / w.mean()  # phase 1's loss (train_unet)
    tuned = tuned_loss(pred, target, w, np.array([0.01, 0.03, 0.09]), Settings())
    assert float(tuned) == pytest.approx(float(plain), rel=1e-6)


def test_tuned_loss_weighs_samples_by_their_noise_and_punishes_a_mean_shift():
    from scanside.training.train import noise_std, tuned_loss

    settings = Settings(noise_weight_power=2.0, lowfreq_weight=16.0)  # runs 6 and 7's options
    rng = np.random.default_rng(0)
    full = np.zeros((2, 32, 32), np.float32)
    low = full + rng.standard_normal((2, 32, 32)).astype(np.float32) * np.array([1, 2],
                                                                              np.float32)[:, None, None]
    std = noise_std(low, full)
    assert std[1] / std[0] == pytest.approx(2, rel=0.1)
    w = torch.ones(2, 1, 32, 32)
    target = torch.zeros(2, 4, 32, 32)
    white = torch.from_numpy(rng.standard_normal((1, 4, 32, 32)).astype(np.float32))
    # The same error on the quieter sample costs about 4x what it costs on the noisier one.
    on_quiet = float(tuned_loss(torch.cat([white, 0 * white]), target, w, std, settings))
    on_noisy = float(tuned_loss(torch.cat([0 * white, white]), target, w, std, settings))
    assert on_quiet / on_noisy == pytest.approx((std[1] / std[0]) ** 2, rel=1e-4)
    # A uniform shift of the same power as white error costs far more (the block average keeps it).
    shift = torch.ones(2, 4, 32, 32) * float(white.pow(2).mean().sqrt())
    noise = torch.cat([white, white])
    assert float(tuned_loss(shift, target, w, std, settings)) > 10 * float(
        tuned_loss(noise, target, w, std, settings))


def test_lesion_pixels_can_keep_their_weight_whatever_the_noise():
    from scanside.training.train import tuned_loss

    settings = Settings(lesion_noise_weighted=False, noise_weight_power=2.0, lowfreq_weight=0.0,
                        lowfreq_px=2)
    target = torch.zeros(2, 1, 4, 4)
    lesion = torch.zeros(2, 1, 4, 4)
    lesion[:, :, 0, 0] = 1
    w = 1 + settings.lesion_weight * lesion
    error = torch.zeros(2, 1, 4, 4)
    error[:, :, 0, 0] = 1  # the same error on each sample's lesion pixel
    std = np.array([1.0, 2.0])
    both = float(tuned_loss(error, target, w, std, settings))
    quiet_only = float(tuned_loss(error * torch.tensor([1.0, 0.0]).view(2, 1, 1, 1), target, w, std, settings))
    # Each lesion error costs the same on the quiet and the noisy sample (its weight is not
    # divided by the noise weight); with lesion_noise_weighted it would differ 4-fold.
    assert quiet_only == pytest.approx(both / 2, rel=0.02)
    weighted = Settings(lesion_noise_weighted=True, noise_weight_power=2.0, lowfreq_weight=0.0,
                        lowfreq_px=2)
    quiet_w = float(tuned_loss(error * torch.tensor([1.0, 0.0]).view(2, 1, 1, 1), target, w, std, weighted))
    assert quiet_w > 0.75 * float(tuned_loss(error, target, w, std, weighted))


@pytest.mark.slow
def test_anatomy_lesions_reach_the_loss_masks_and_leave_the_doses_alone():
    from scipy import ndimage

    from scanside.training.train import scene_patches

    plain = scene_patches(("natural", 1, Settings(patch=64)))
    with_lesions = scene_patches(("natural", 1, Settings(patch=64, anatomy_lesions=8.0)))
    assert not plain["lesions"].any() and with_lesions["lesions"].any()
    # The lesions draw from their own generator: the same patches at the same dose.
    far = ~ndimage.binary_dilation(with_lesions["lesions"], iterations=4, axes=(1, 2))
    # Far from them only the reference's own noise differs (the Poisson draws part ways once a
    # ray crosses a lesion): ~0.8 HU on average, so its single largest pixel is no measure
    # (5.09 HU once the view count changed from 403 to 404); a patch cut elsewhere or a lesion
    # leaking out would move the mean and the tail by tens of HU.
    diff = np.abs(plain["full"] - with_lesions["full"])[far] * 1000  # HU
    assert diff.mean() < 1.5 and np.percentile(diff, 99.9) < 5
    noise = lambda out: (out["low"] - out["full"]).std()  # noqa: E731
    assert abs(noise(with_lesions) / noise(plain) - 1) < 0.05


@pytest.mark.slow
def test_phase_two_only_scenes_stay_out_of_phase_one(tmp_path):
    from scanside.training.train import load_data, sample

    settings = Settings(scenes=(("phantom", 1),), tune_scenes=(("leaves", 1),),
                        patches=(("phantom", 1), ("leaves", 2)), patch=32, workers=1)
    data = load_data(tmp_path, settings, echo=lambda _: None)
    assert data["phase1"] == 2 and len(data["full"]) == 2 + 4  # 2 doses x patches
    phase1 = {data["full"][i].tobytes() for i in range(2)}
    seen = set()
    for step in range(20):
        _, full, _ = sample(data, np.random.default_rng(step), 2, settings, data["phase1"])
        seen |= {v.tobytes() for f in full for v in (dihedral(f, k) for k in range(8))}
    assert phase1 & seen and not any(data["full"][i].tobytes() in seen for i in range(2, 6))


def test_a_run_folder_from_before_a_new_setting_still_resumes():
    from dataclasses import asdict

    from scanside.training.train import same_run

    wanted = json.loads(json.dumps(asdict(Settings())))
    old = {k: v for k, v in wanted.items() if k != "tune_scenes"}  # written before it existed
    assert same_run(old, wanted) and same_run(wanted, wanted)
    assert not same_run(old, {**wanted, "tune_scenes": [["leaves", 100]]})
    older = {k: v for k, v in old.items() if k != "tune_noise_scale"}
    assert same_run(older, wanted)
    assert not same_run(older, {**wanted, "tune_noise_scale": [0.35, 1.4]})
    assert not same_run({**old, "seed": 1}, wanted)
    # A source added to the patch counts since: the run does not use it, so it still resumes.
    before = {**wanted, "patches": [p for p in wanted["patches"] if p[0] != "tissue"]}
    assert same_run(before, wanted)
    assert not same_run(before, {**wanted, "scenes": [*wanted["scenes"], ["tissue", 100]]})
    assert not same_run({**wanted, "patches": [["head", 3], *wanted["patches"][1:]]}, wanted)


def test_widening_conv_in_for_the_noise_channel_leaves_the_model_as_it_was():
    from scanside.training.recipes import build_components, recipe

    narrow = build_components(recipe("ct-tiny"), 64, seed=0)["unet"].eval()
    wide = build_components(recipe("ct-tiny-noise"), 64, seed=1)["unet"].eval()
    wide.load_state_dict(train.widen_conv_in(narrow.state_dict(), wide))
    x = torch.randn(2, 8, 32, 32)
    level = torch.full((2, 1, 32, 32), 0.7)
    text = torch.randn(2, 77, 32)
    with torch.no_grad():
        want = narrow(x, torch.tensor([1, 5]), text).sample
        got = wide(torch.cat([x, level], 1), torch.tensor([1, 5]), text).sample
    assert torch.equal(got, want)


@pytest.mark.slow
def test_a_noise_conditioned_model_exports_and_enhances_with_its_noise_channel(trained, tmp_path):
    from scanside.export import export_model
    from scanside.runtime import Pipeline, noise_level

    model_dir, _ = trained
    settings = Settings(**{**TINY.__dict__, "recipe": "ct-tiny-noise", "unet_steps": 0,
                           "tune_steps": 1, "init": str(model_dir)})
    tuned = train_default(with_scenes(tmp_path / "noise", trained), settings, echo=lambda _: None)
    from safetensors.torch import load_file, save_file

    # One warm-up step barely moves the new channel's weights from zero: give it some, so
    # the noise level visibly reaches the output.
    weights = load_file(str(tuned / UNET))
    weights["conv_in.weight"][:, 8] = 0.5
    save_file(weights, str(tuned / UNET))
    spec = json.loads((tuned / "scanside.json").read_text())["noise_level"]
    assert spec == {"estimator": noise_level.ESTIMATOR, "scale": 64.0, "window": 32}
    manifest = export_model(tuned, tmp_path / "engine", height=32, width=32, dynamic=True)
    assert manifest.noise_level == spec
    assert manifest.components["unet"].spec.inputs[0].shape[1] == 9
    pipe = Pipeline.load(tmp_path / "engine")
    image = np.random.default_rng(0).uniform(0.3, 0.7, (64, 48)).astype(np.float32)
    prepared = pipe.prepare(image)
    mean, _ = pipe.encode(prepared.pixels)
    condition = pipe.unet_condition(prepared.pixels, mean)
    assert condition.shape[1] == 5
    level = noise_level.estimate_windows(prepared.pixels[0, 0], 32) * 64.0
    assert level > 0 and np.allclose(condition[:, 4], level)
    out = pipe.enhance(image)
    assert out.shape == image.shape and np.isfinite(out).all()
    told_more = pipe.enhance(image, noise_factor=3.0)
    assert np.abs(told_more - out).max() > 1e-5  # the same call twice gives the same bytes
    assert "x 3" in pipe.describe(noise_factor=3.0) and "estimated" in pipe.describe()
    assert pipe.fingerprint(noise_factor=3.0) != pipe.fingerprint()
    with pytest.raises(InputError, match="noise_factor: 0"):
        pipe.enhance(image, noise_factor=0)
    # Every view of an ensemble is told the level of the image as given, not its own reading.
    seen = []
    original = pipe.unet_condition
    pipe.unet_condition = lambda pixels, mean, level=None: (seen.append(level),  # type: ignore
                                                            original(pixels, mean, level))[1]
    pipe.enhance(image, ensemble=8, noise_factor=2.0)
    assert len(seen) == 8 and set(seen) == {pipe.noise_channel(prepared.pixels, 2.0)}


@pytest.mark.slow
def test_noise_factor_is_refused_by_a_model_that_reads_the_noise_itself(trained, tmp_path):
    from scanside.export import export_model
    from scanside.runtime import Pipeline

    model_dir, _ = trained
    export_model(model_dir, tmp_path / "engine")
    pipe = Pipeline.load(tmp_path / "engine")
    image = np.full((32, 32), 0.5, np.float32)
    with pytest.raises(InputError, match="not a noise-conditioned model"):
        pipe.enhance(image, noise_factor=2.0)
    assert pipe.enhance(image, noise_factor=1.0).shape == image.shape
    assert pipe.fingerprint() == pipe.fingerprint(noise_factor=1.0)


def test_phase_two_can_put_every_patch_at_one_noise_level():
    from scanside.training.train import sample

    rng = np.random.default_rng(0)
    full = rng.standard_normal((6, 16, 16)).astype(np.float32) * 0.1
    noise = rng.standard_normal((6, 16, 16)).astype(np.float32) * rng.uniform(0.01, 0.09, (6, 1, 1))
    data = {"full": full, "low": full + noise.astype(np.float32), "lesions": full > 1}
    settings = Settings(tune_noise_hu=20.0)
    low, ref, _ = sample(data, np.random.default_rng(1), 6, settings, None, None, 20.0)
    std_hu = (low - ref).reshape(6, -1).std(axis=1) * 1000
    assert np.all((std_hu > 20 / 1.151) & (std_hu < 20 * 1.151)) and np.ptp(std_hu) > 1
    _, ref1, _ = sample(data, np.random.default_rng(1), 6, settings)
    np.testing.assert_array_equal(ref, ref1)  # the same patches and views as without it
