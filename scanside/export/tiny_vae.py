"""A tiny distilled VAE (TAESD format) in place of the checkpoint's own.

SD 1.5's VAE is most of an img2img call's time at low step counts: at 512 px on a 2-core CPU
its decoder alone costs three UNet steps (bench/README.md). madebyollin's TAESD (diffusers'
``AutoencoderTiny``, ~1.2 M parameters per half) is distilled to read and write the same
latents. A user who has its weights (``madebyollin/taesd`` for SD 1.x/2.x, saved with
``save_pretrained``) exports with ``--tiny-vae DIR``; scanside never downloads one.

The swap is confined to the export: each TAESD half is wrapped to keep the contract of the
component it replaces — the encoder returns (mean, std) of *unscaled* latents (std zero: TAESD
is deterministic), the decoder takes unscaled latents — so the manifest keeps the checkpoint's
``vae_scaling_factor`` and the runtime, tiles and TensorRT paths are unchanged. TAESD's latents
are SD's latents already multiplied by the scaling factor, hence the factor in the wrappers.

What it costs in quality is measured at export and written to the manifest (``tiny_vae``):
PSNR of the tiny VAE's round trip and decode against the checkpoint's own VAE on held-out
images, so a user sees the price before choosing it.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from scanside.errors import InputError

from .reduce import psnr
from .specs import ModelShape


class TinyVaeParts(str, enum.Enum):
    BOTH = "both"  # encoder and decoder: TAESD as distilled, as a pair
    DECODER = "decoder"  # the decoder only: the encoder stays the checkpoint's (img2img input)

    @property
    def components(self) -> tuple[str, ...]:
        return ("vae_encoder", "vae_decoder") if self is TinyVaeParts.BOTH else ("vae_decoder",)


def load(path: Path) -> Any:
    """diffusers' AutoencoderTiny from a folder, safetensors only."""
    from diffusers import AutoencoderTiny

    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(f"tiny_vae {path}: no config.json; give a diffusers AutoencoderTiny "
                         "folder (TAESD saved with save_pretrained)")
    if not any(path.glob("*.safetensors")):
        raise InputError(f"tiny_vae {path}: no .safetensors weights; scanside reads weights "
                         "only from safetensors (convert with save_pretrained(safe_serialization"
                         "=True))")
    try:
        return AutoencoderTiny.from_pretrained(path, use_safetensors=True,
                                               low_cpu_mem_usage=False).eval()
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"tiny_vae {path}: not an AutoencoderTiny folder ({exc}); give a "
                         "TAESD folder in diffusers' format") from None


def check_fits(tiny: Any, shape: "ModelShape", path: Path) -> None:
    """The tiny VAE must read and write the checkpoint's latents: same image and latent
    channels, same spatial factor (measured on a probe, not read from the config)."""
    cfg = tiny.config
    want = (shape.image_channels, shape.latent_channels)
    have = (int(cfg.in_channels), int(cfg.latent_channels))
    if have != want:
        raise InputError(f"tiny_vae {path}: {have[0]} image and {have[1]} latent channels, the "
                         f"checkpoint's VAE has {want[0]} and {want[1]}; use the TAESD made for "
                         "this model family (taesd: SD 1.x/2.x, taesdxl: SDXL)")
    factor = shape.vae_factor
    with torch.inference_mode():
        latent = tiny.encoder(torch.zeros(1, have[0], 8 * factor, 8 * factor))
    if tuple(latent.shape[-2:]) != (8, 8):
        raise InputError(f"tiny_vae {path}: its encoder scales by "
                         f"{8 * factor // latent.shape[-1]}, the checkpoint's VAE by {factor}; "
                         "use the TAESD made for this model family")


class TinyVaeEncoder(torch.nn.Module):
    """Image in [-1, 1] -> (mean, std) of unscaled latents, as onnx.VaeEncoder returns."""

    def __init__(self, tiny: Any, scaling_factor: float):
        super().__init__()
        self.tiny, self.scaling_factor = tiny, float(scaling_factor)

    def forward(self, image):
        mean = self.tiny.encode(image, return_dict=False)[0] / self.scaling_factor
        return mean, torch.zeros_like(mean)


class TinyVaeDecoder(torch.nn.Module):
    """Unscaled latents -> image in [-1, 1], as onnx.VaeDecoder."""

    def __init__(self, tiny: Any, scaling_factor: float):
        super().__init__()
        self.tiny, self.scaling_factor = tiny, float(scaling_factor)

    def forward(self, latent):
        return self.tiny.decode(latent * self.scaling_factor, return_dict=False)[0]


def wrap(component: str, tiny: Any, scaling_factor: float) -> torch.nn.Module:
    kind = {"vae_encoder": TinyVaeEncoder, "vae_decoder": TinyVaeDecoder}[component]
    return kind(tiny, scaling_factor).eval()


def held_out_images(channels: int, height: int, width: int, count: int = 2) -> np.ndarray:
    """(count, C, H, W) in [-1, 1]: the export's synthetic phantoms, not calibration images."""
    from .calibration import phantom

    images = [phantom(max(height, width), seed=1000 + i)[:height, :width] for i in range(count)]
    out = np.stack([np.repeat(im[None], channels, axis=0) for im in images]).astype(np.float32)
    return out * 2 - 1


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """[-1, 1] images, scored in [0, 1] as the manifest's other PSNRs are."""
    unit = lambda x: ((x.clamp(-1, 1) + 1) / 2).numpy()  # noqa: E731
    return round(psnr(unit(a), unit(b)), 2)


def quality(tiny: Any, vae: Any, scaling_factor: float, channels: int, height: int,
            width: int) -> dict[str, float]:
    """What the tiny VAE costs, in torch on held-out images: each VAE's round trip against the
    image, and the tiny decoder against the checkpoint's on the same latents (what a swapped
    decoder changes in every output)."""
    from .onnx import VaeDecoder, VaeEncoder

    images = torch.from_numpy(held_out_images(channels, height, width))
    full_enc, full_dec = VaeEncoder(vae).eval(), VaeDecoder(vae).eval()
    tiny_enc = TinyVaeEncoder(tiny, scaling_factor)
    tiny_dec = TinyVaeDecoder(tiny, scaling_factor)
    with torch.inference_mode():
        latents = full_enc(images)[0]
        full = full_dec(latents)
        return {
            "full_round_trip_psnr_db": _psnr(full, images),
            "tiny_round_trip_psnr_db": _psnr(tiny_dec(tiny_enc(images)[0]), images),
            "tiny_decode_vs_full_psnr_db": _psnr(tiny_dec(latents), full),
        }


def record(path: Path, parts: TinyVaeParts, source_hash: str,
           measured: Mapping[str, float]) -> dict[str, Any]:
    """The manifest's ``tiny_vae`` entry."""
    return {"source": Path(path).name, "source_hash": source_hash,
            "components": list(parts.components), "quality": dict(measured),
            "quality_images": "synthetic phantoms (export's held-out set), [0, 1] scale"}
