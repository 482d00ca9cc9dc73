"""Model recipes: Stable-Diffusion-architecture checkpoints built offline from a config.

Each recipe writes diffusers' folder format exactly as a real checkpoint is laid out
(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), so export reads it
through the same code path as a downloaded one. Weights are seeded random: the images they
make are noise, which is all a parity test or a latency benchmark needs.
"""

from __future__ import annotations

import enum
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanside.errors import InputError
from scanside.runtime import noise_level

from . import identity_vae

log = logging.getLogger(__name__)
CLIP_VOCAB = Path(__file__).resolve().parent / "data" / "clip-tokenizer"

# Stable Diffusion 1.5's scheduler_config.json.
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False,
}


# The default CT model's scheduler: DDIM with v-prediction on SD's betas. "leading" spacing
# with offset 1 puts a 20-step schedule's last step at t = 1, where a low-strength enhancement
# only removes noise; set_alpha_to_one makes that step return the predicted clean latent
# instead of re-adding 70 % of the noise it just predicted (alphas_cumprod[0] = 0.99915).
CT_SCHEDULER = {
    "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": True,
    "steps_offset": 1, "trained_betas": None, "clip_sample": False,
    "prediction_type": "v_prediction", "timestep_spacing": "leading",
}


class RecipeName(str, enum.Enum):
    TINY = "tiny"
    TINY_CONCAT = "tiny-concat"
    SD15_SHAPED = "sd15-shaped"
    CT_DEFAULT = "ct-default"  # the shape of scanside's default low-dose CT model
    CT_TINY = "ct-tiny"  # the same block types, small enough to train in seconds in tests
    CT_TINY_NOISE = "ct-tiny-noise"  # ct-tiny with ct-noise's noise-level channel
    CT_DEEP = "ct-deep"  # ct-default with two ResNet blocks below full resolution (run 13)
    CT_NOISE = "ct-noise"  # ct-default conditioned on the input's estimated noise level
    CT_FAST = "ct-fast"  # ct-default without ResNet blocks on the way down at full resolution


@dataclass(frozen=True)
class Recipe:
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    real_vocab: bool  # the real CLIP vocabulary, else a small generated one
    sample_size: int  # default image size in pixels
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD15_SCHEDULER))
    identity_vae: bool = False  # the VAE's weights are set to the identity (identity_vae.py)
    # A noise-conditioned UNet's noise-level channel (runtime/noise_level.py): the estimator
    # and the factor its estimate is multiplied by; written to the model's scanside.json.
    noise_level: "dict[str, Any] | None" = None

    def model_settings(self, window: int) -> dict[str, Any]:
        """What a model of this recipe adds to its scanside.json: the noise-level entry, with
        the patch size it was trained on as the window its level is estimated on."""
        return {"noise_level": {**self.noise_level, "window": window}} if self.noise_level else {}


def tiny_unet(in_channels: int) -> dict[str, Any]:
    # Two resolutions, one cross-attention level: every block type SD uses, in seconds.
    return dict(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32,
    )


# Four VAE levels keep SD's 8x latent factor; eight groups divide the small channel counts.
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=(16, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, sample_size=64,
)
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                 num_hidden_layers=2, max_position_embeddings=77, hidden_act="quick_gelu")



def ct_unet(channels: tuple[int, ...], cross_attention_dim: int, groups: int,
            latent_size: int, layers_per_block: "int | tuple[int, ...]" = 1,
            noise_channel: bool = False) -> dict[str, Any]:
    """Grayscale image-conditioned UNet: noisy latent + low-dose latent in (4 + 4 channels,
    and the noise-level channel when ``noise_channel``),
    plain ResNet levels at high resolution, cross-attention to the prompt at the lowest.
    Cross-attention only, and a mid block without attention (diffusers' cross-attention mid
    block always adds self-attention): a 512 px slice's lowest level has 4096
    positions, whose self-attention costs quadratically and makes every output pixel depend
    on the whole image, so tiles and the whole slice would differ; convolutions alone see a
    bounded neighbourhood, which a tile reproduces inside it (up to GroupNorm, whose
    statistics are taken per call: see runtime/tiles.py)."""
    levels = len(channels)
    return dict(
        sample_size=latent_size, in_channels=8 + noise_channel, out_channels=4,
        layers_per_block=layers_per_block, block_out_channels=channels,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=groups,
        only_cross_attention=True, mid_block_type="UNetMidBlock2D",
    )


CT_TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
               max_position_embeddings=77, hidden_act="quick_gelu")

RECIPES = {
    RecipeName.TINY: Recipe(tiny_unet(4), TINY_VAE, TINY_TEXT, real_vocab=False, sample_size=64),
    RecipeName.TINY_CONCAT: Recipe(tiny_unet(8), TINY_VAE, TINY_TEXT, real_vocab=False,
                                   sample_size=64),
    # SD 1.5's sizes: UNet 859.5 M, VAE 83.7 M, CLIP ViT-L/14 text encoder 123.1 M parameters.
    RecipeName.SD15_SHAPED: Recipe(
        unet=dict(sample_size=64, cross_attention_dim=768),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                 block_out_channels=(128, 256, 512, 512),
                 down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512),
        text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                  num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu",
                  projection_dim=768),
        real_vocab=True, sample_size=512,
    ),
    # The generated vocabulary, not CLIP's: the real 49,408-token embedding table alone would
    # be 12.6 MB at fp32 (a third of the shipped model's budget) for a model that only ever
    # reads a task prompt. Widths sized for a 512 px slice in under a second on 2 CPU cores:
    # the first UNet level runs at full resolution, so it has 16 channels (measured in torch
    # at 512 px: UNet (32, 32, 64, 96) 1.96 s, (16, 32, 64, 96) 1.22 s). The VAE is the
    # identity (latent factor 1, see identity_vae.py): the diffusion runs on the pixels.
    RecipeName.CT_DEFAULT: Recipe(
        ct_unet((16, 32, 64, 96), 64, 8, 128), identity_vae.config(128), CT_TEXT,
        real_vocab=False, sample_size=128, scheduler=dict(CT_SCHEDULER), identity_vae=True),
    # Capacity where it is cheap: a second ResNet block on every level below full resolution
    # (3.11 M parameters). ONNX Runtime, 2 threads, 512 px, random weights, one run on a
    # 2-core Zen 4: 1.58x ct-default's UNet time; widening full resolution to 24 channels
    # cost 1.54x for 0.07 M parameters, (16, 48, 96, 128) 1.80x.
    RecipeName.CT_DEEP: Recipe(
        ct_unet((16, 32, 64, 96), 64, 8, 128, layers_per_block=(1, 2, 2, 2)),
        identity_vae.config(128), CT_TEXT, real_vocab=False, sample_size=128,
        scheduler=dict(CT_SCHEDULER), identity_vae=True),
    # Speed where the time goes: at 512 px the full-resolution level's normalisation,
    # activation and residual passes over 16 channels are ~45 % of the UNet's time on a CPU
    # (bench/README.md). No ResNet block on the way down at full resolution (conv_in goes
    # straight to the stride-2 convolution; the way up keeps one block over the skip):
    # ONNX Runtime, 512 px, random weights, 2-core Zen 3: 0.72-0.88x ct-default's UNet
    # time (three runs, 1 and 2 threads). Trained (run 28, phase 1) it removes less noise:
    # 0.3-0.7 dB under ct-default on the held-out anatomy, so it is not the default.
    RecipeName.CT_FAST: Recipe(
        ct_unet((16, 32, 64, 96), 64, 8, 128, layers_per_block=(0, 1, 1, 1)),
        identity_vae.config(128), CT_TEXT, real_vocab=False, sample_size=128,
        scheduler=dict(CT_SCHEDULER), identity_vae=True),
    # ct-default plus a ninth input channel carrying the low-dose image's estimated noise
    # (runtime/noise_level.py; FFDNet's noise map), scaled so 40 HU of CT noise is about 1.
    # A model of ct-default's shape starts it exactly (train-default --init pads the new
    # channel's input weights with zeros).
    RecipeName.CT_NOISE: Recipe(
        ct_unet((16, 32, 64, 96), 64, 8, 128, noise_channel=True), identity_vae.config(128),
        CT_TEXT, real_vocab=False, sample_size=128, scheduler=dict(CT_SCHEDULER),
        identity_vae=True, noise_level={"estimator": noise_level.ESTIMATOR, "scale": 64.0}),
    RecipeName.CT_TINY_NOISE: Recipe(
        ct_unet((16, 32), 32, 8, 32, noise_channel=True), identity_vae.config(32), TINY_TEXT,
        real_vocab=False, sample_size=32, scheduler=dict(CT_SCHEDULER), identity_vae=True,
        noise_level={"estimator": noise_level.ESTIMATOR, "scale": 64.0}),
    RecipeName.CT_TINY: Recipe(
        ct_unet((16, 32), 32, 8, 32), identity_vae.config(32), TINY_TEXT, real_vocab=False,
        sample_size=32, scheduler=dict(CT_SCHEDULER), identity_vae=True),
}


def recipe(name: "str | RecipeName") -> Recipe:
    try:
        return RECIPES[RecipeName(name)]
    except ValueError:
        names = ", ".join(r.value for r in RecipeName)
        raise InputError(f"model recipe {name!r} is unknown; choose one of {names}") from None


def write_tokenizer(folder: Path, real_vocab: bool) -> int:
    from .vocab import write_vocab

    folder.mkdir(parents=True, exist_ok=True)
    if real_vocab:
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(CLIP_VOCAB / name, folder / name)
        size = len(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    else:
        size = write_vocab(folder)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {**special, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return size


def build_components(spec: Recipe, vocab_size: int, seed: int) -> dict[str, Any]:
    """The torch modules of a recipe, with weights drawn from ``seed``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    scheduler_class = {"PNDMScheduler": PNDMScheduler,
                       "DDIMScheduler": DDIMScheduler}[spec.scheduler["_class_name"]]
    text_config = CLIPTextConfig(vocab_size=vocab_size, bos_token_id=vocab_size - 2,
                                 eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                                 **spec.text)
    vae = AutoencoderKL(**spec.vae)
    if spec.identity_vae:
        identity_vae.set_identity(vae)
    return {
        "unet": UNet2DConditionModel(**spec.unet),
        "vae": vae,
        "text_encoder": CLIPTextModel(text_config),
        "scheduler": scheduler_class.from_config(spec.scheduler),
    }


def staging_for(out_dir: Path) -> Path:
    """A clean ``OUT_DIR.partial`` to write into; ``out_dir`` must be new or empty."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir}: folder exists and is not empty; choose a new OUT_DIR")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def publish(staging: Path, out_dir: Path) -> None:
    """Rename the finished folder into place: a crash never leaves a half-written model
    behind the real name."""
    if out_dir.exists():
        out_dir.rmdir()
    staging.rename(out_dir)


def build(name: "str | RecipeName", out_dir: Path, seed: int = 0) -> Path:
    """Write recipe ``name`` to ``out_dir`` in diffusers' folder format; returns ``out_dir``."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    spec = recipe(name)
    out_dir = Path(out_dir)
    staging = staging_for(out_dir)
    vocab_size = write_tokenizer(staging / "tokenizer", spec.real_vocab)
    parts = build_components(spec, vocab_size, seed)
    tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer")
    pipe = StableDiffusionPipeline(**parts, tokenizer=tokenizer, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(staging)
    settings = spec.model_settings(spec.sample_size)  # export needs to know an extra channel
    if settings:
        from scanside.export.checkpoint import SETTINGS_FILE

        (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    if spec.real_vocab:  # the CLIP vocabulary travels with its licence notice
        shutil.copyfile(CLIP_VOCAB / "README.md", staging / "tokenizer" / "README.md")
    publish(staging, out_dir)
    log.info("built %s model (seed %d) in %s", RecipeName(name).value, seed, out_dir)
    return out_dir


# Tiny distilled VAEs (diffusers' AutoencoderTiny) for ``export --tiny-vae``: TAESD's own shape
# (its defaults: 64 channels, 1.2 M parameters per half) to benchmark, and a small one for tests.
TINY_VAE_SHAPES: dict[str, dict[str, Any]] = {
    "taesd": {},
    "tiny": dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                 num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)),
}


def build_tiny_vae(shape: str, out_dir: Path, seed: int = 0) -> Path:
    """An AutoencoderTiny of ``shape`` with weights drawn from ``seed``, in diffusers' folder
    format. Random weights: for timing and for tests, not for pictures."""
    import torch
    from diffusers import AutoencoderTiny

    if shape not in TINY_VAE_SHAPES:
        raise InputError(f"tiny VAE shape {shape!r}: choose from {sorted(TINY_VAE_SHAPES)}")
    out_dir = Path(out_dir)
    staging = staging_for(out_dir)
    torch.manual_seed(seed)
    AutoencoderTiny(**TINY_VAE_SHAPES[shape]).save_pretrained(staging, safe_serialization=True)
    publish(staging, out_dir)
    return out_dir
