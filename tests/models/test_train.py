"""Training the default model, on the tiny recipe and a handful of 32-px pairs: the folder it
writes, reproducibility from the seed, and resuming from a checkpoint mid-stage."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")

from scanside.errors import InputError  # noqa: E402
from scanside.models import train  # noqa: E402
from scanside.models.train import Settings, dihedral, train_default  # noqa: E402

TINY = Settings(recipe="ct-tiny", train_pairs=4, vae_steps=3, vae_batch=2, unet_steps=4,
                unet_batch=2, checkpoint_every=1, workers=1, specialise_from=1,
                refine_from=2, unet_restarts=(2,), lesion_from=3)  # every phase
UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    lines: list[str] = []
    return train_default(out, TINY, echo=lines.append), lines


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
    assert any("lesion-weighted from step 3" in line for line in lines)


def test_export_carries_the_model_settings_into_the_manifest(trained, tmp_path):
    from scanside.export import export_model

    model_dir, _ = trained
    manifest = export_model(model_dir, tmp_path / "engine")
    assert manifest.enhance_defaults["prompt"] == train.PROMPT
    assert manifest.conditioning.value == "concat" and manifest.image_channels == 1


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
        train_default(tmp_path, TINY, echo=lambda _: None)
    assert not (tmp_path / "model").exists()
    monkeypatch.setattr(train.Checkpoints, "save", original)
    lines: list[str] = []
    resumed = train_default(tmp_path, TINY, echo=lines.append)
    assert any("steps 2..4" in line for line in lines)  # it went on, did not start over
    assert (resumed / UNET).read_bytes() == (model_dir / UNET).read_bytes()


def test_other_settings_in_the_same_folder_are_refused(trained):
    model_dir, _ = trained
    other = Settings(**{**TINY.__dict__, "unet_steps": 5})
    with pytest.raises(InputError, match="other settings"):
        train_default(model_dir.parent, other, echo=lambda _: None)


def test_dihedral_gives_eight_distinct_invertible_views():
    image = np.arange(16.0).reshape(4, 4)
    views = [dihedral(image, k) for k in range(8)]
    assert len({v.tobytes() for v in views}) == 8
    assert all(sorted(v.ravel()) == sorted(image.ravel()) for v in views)


def test_specialised_batches_start_from_the_low_dose_latent_in_range():
    from scanside.models.train import specialise

    settings = Settings()
    x0, low = torch.zeros(64, 4, 2, 2), np.ones((64, 4, 2, 2), np.float32)
    t, start = specialise(np.random.default_rng(0), torch.zeros(64, dtype=torch.long), x0, low,
                          settings, step=settings.specialise_from)
    from_low = start.flatten(1).mean(1) == 1
    assert 0.3 < from_low.float().mean() < 0.7  # low_start = 0.5
    assert (t[from_low] >= settings.low_start_t_min).all()
    assert (t <= settings.specialise_t).all() and (t[~from_low] >= 0).all()
    t, start = specialise(np.random.default_rng(0), torch.zeros(64, dtype=torch.long), x0, low,
                          settings, step=settings.refine_from)
    assert (t <= settings.refine_t).all() and (start.flatten(1).mean(1) == 1).float().mean() > 0.6


def test_learning_rate_restarts_keep_earlier_steps_rates():
    from scanside.models.train import cosine_lr, unet_lr

    one = Settings(unet_steps=100, unet_restarts=())
    two = Settings(unet_steps=150, unet_restarts=(100,))
    assert all(unet_lr(k, one) == unet_lr(k, two) == cosine_lr(k, 100, one.unet_lr)
               for k in range(100))
    assert unet_lr(100, two) == pytest.approx(two.unet_lr / 3)  # the restart's peak
    lesions = Settings(unet_steps=200, unet_restarts=(100,), lesion_from=150, lesion_lr=1e-5)
    assert all(unet_lr(k, lesions) == unet_lr(k, two) for k in range(150))
    assert unet_lr(150, lesions) == pytest.approx(1e-5)  # its own cycle
    assert unet_lr(199, lesions) < unet_lr(150, lesions)


def test_lesion_masks_follow_the_phantoms_and_the_latents_views():
    from scanside.models import ctsim
    from scanside.models.train import latent_views, lesion_masks

    settings = Settings(train_pairs=6)
    masks = lesion_masks(settings, 64)
    assert masks.shape == (12, 64, 64) and masks.dtype == bool
    views = latent_views(settings.seed, 6)
    for i, seed in enumerate(ctsim.split_seeds("train", 6)):
        phantom = ctsim.make_phantom(seed, 64)
        assert (masks[i] == ctsim.lesion_mask(phantom, settings.lesion_grow)).all()
        assert (masks[6 + i] == dihedral(masks[i], int(views[i]))).all()
        for les in phantom.lesions:  # every lesion centre is marked, its far ring is not
            assert masks[i][int(round(les.y)), int(round(les.x))]
    assert masks.any()
