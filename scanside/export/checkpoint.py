"""Reading a Stable Diffusion checkpoint in diffusers' folder format."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanside.errors import InputError
from scanside.runtime.tokenizer import EOS, ClipTokenizer

REQUIRED = ("model_index.json", "unet/config.json", "vae/config.json",
            "text_encoder/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
            "scheduler/scheduler_config.json")


@dataclass
class Checkpoint:
    path: Path
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: ClipTokenizer
    scheduler_config: dict[str, Any]

    @property
    def configs(self) -> dict[str, Any]:
        return {"unet": dict(self.unet.config), "vae": dict(self.vae.config),
                "text_encoder": self.text_encoder.config.to_dict()}


def check_folder(path: Path) -> None:
    if not path.is_dir():
        raise InputError(f"{path}: no such model folder; give a diffusers checkpoint folder "
                         "(or build one: `scanside models build tiny DIR`)")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise InputError(f"{path}: not a diffusers Stable Diffusion folder, missing {missing}; "
                         "save the pipeline with save_pretrained() or build one with "
                         "`scanside models build`")


def read_tokenizer(folder: Path) -> ClipTokenizer:
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    pad = config.get("pad_token", EOS)
    pad = pad.get("content", EOS) if isinstance(pad, dict) else pad
    max_length = int(config.get("model_max_length", 77))
    if max_length > 77:  # transformers writes a huge sentinel when it is unset; CLIP's is 77
        max_length = 77
    return ClipTokenizer.from_files(folder / "vocab.json", folder / "merges.txt",
                                    max_length=max_length, pad_token=pad)


def load(path: Path) -> Checkpoint:
    """Load a checkpoint with diffusers/transformers, exactly as their pipelines do."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    path = Path(path)
    check_folder(path)
    return Checkpoint(
        path=path,
        unet=UNet2DConditionModel.from_pretrained(path / "unet", low_cpu_mem_usage=False).eval(),
        vae=AutoencoderKL.from_pretrained(path / "vae", low_cpu_mem_usage=False).eval(),
        text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder").eval(),
        tokenizer=read_tokenizer(path / "tokenizer"),
        scheduler_config=json.loads((path / "scheduler" / "scheduler_config.json").read_text()),
    )
