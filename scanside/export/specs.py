"""The IOSpec of each exported component, derived from the checkpoint's configs.

Dimension names: ``B`` text/VAE batch, ``UB`` UNet batch (2B when classifier-free guidance
runs both halves in one call), ``H``/``W`` pixels, ``h``/``w`` latents (H/8, W/8).
The batch axes are always dynamic (one call serves guided and unguided runs); H/W are static
unless ``dynamic`` is asked for, because ORT and TensorRT both run static shapes fastest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from scanside.runtime.iospec import IOSpec, TensorSpec

COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a checkpoint that fix every tensor shape."""

    vocab_size: int
    max_length: int
    text_dim: int
    image_channels: int
    latent_channels: int
    unet_in_channels: int
    vae_factor: int
    divisor: int  # image sizes are multiples of it: vae_factor x 2 ** UNet downsamplings
    # LCM-distilled UNets (time_cond_proj_dim): the width of their guidance-scale embedding,
    # an extra UNet input; 0 for every other UNet.
    guidance_embedding_dim: int = 0

    @classmethod
    def from_configs(cls, configs: Mapping[str, Mapping[str, Any]]) -> "ModelShape":
        text, unet, vae = configs["text_encoder"], configs["unet"], configs["vae"]
        return cls(
            vocab_size=text["vocab_size"], max_length=text["max_position_embeddings"],
            text_dim=text["hidden_size"], image_channels=vae["in_channels"],
            latent_channels=vae["latent_channels"], unet_in_channels=unet["in_channels"],
            vae_factor=2 ** (len(vae["block_out_channels"]) - 1),
            divisor=2 ** (len(vae["block_out_channels"]) - 1)
            * 2 ** (len(unet["block_out_channels"]) - 1),
            guidance_embedding_dim=int(unet.get("time_cond_proj_dim") or 0),
        )


def build_specs(shape: ModelShape, height: int, width: int, dynamic: bool) -> dict[str, IOSpec]:
    f = shape.vae_factor
    static = {} if dynamic else {"H": height, "W": width, "h": height // f, "w": width // f}
    ranges = {"B": (1, 1, 4), "UB": (1, 2, 8)}
    if dynamic:
        # Multiples of the divisor from 64 pixels (a small CT or MR matrix runs at its own size
        # instead of padded to 256) to 1024 (larger images run in tiles), tuned at the asked size.
        low = max(64, shape.divisor)
        for big, small in (("H", "h"), ("W", "w")):
            opt = height if big == "H" else width
            ranges[big] = (low, opt, max(1024, opt))
            ranges[small] = (low // f, opt // f, max(1024, opt) // f)
    r = ranges
    c, lc = shape.image_channels, shape.latent_channels
    guidance = ((TensorSpec("timestep_cond", "float32", ("UB", shape.guidance_embedding_dim)),)
                if shape.guidance_embedding_dim else ())
    return {
        "text_encoder": IOSpec(
            "text_encoder",
            inputs=(TensorSpec("input_ids", "int32", ("B", shape.max_length)),),
            outputs=(TensorSpec("last_hidden_state", "float32", ("B", shape.max_length, shape.text_dim)),),
            static={}, ranges={"B": r["B"]},
        ),
        "unet": IOSpec(
            "unet",
            inputs=(
                TensorSpec("sample", "float32", ("UB", shape.unet_in_channels, "h", "w")),
                TensorSpec("timestep", "float32", (1,)),
                TensorSpec("encoder_hidden_states", "float32", ("UB", shape.max_length, shape.text_dim)),
                *guidance,
            ),
            outputs=(TensorSpec("out_sample", "float32", ("UB", lc, "h", "w")),),
            static=static, ranges=r,
        ),
        "vae_encoder": IOSpec(
            "vae_encoder",
            inputs=(TensorSpec("image", "float32", ("B", c, "H", "W")),),
            outputs=(TensorSpec("latent_mean", "float32", ("B", lc, "h", "w")),
                     TensorSpec("latent_std", "float32", ("B", lc, "h", "w"))),
            static=static, ranges=r,
        ),
        "vae_decoder": IOSpec(
            "vae_decoder",
            inputs=(TensorSpec("latent", "float32", ("B", lc, "h", "w")),),
            outputs=(TensorSpec("image", "float32", ("B", c, "H", "W")),),
            static=static, ranges=r,
        ),
    }
