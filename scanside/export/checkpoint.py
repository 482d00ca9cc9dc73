"""Reading a Stable Diffusion checkpoint in diffusers' folder format."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanside.errors import InputError
from scanside.runtime.sampling import Sampling
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
    for part in ("unet", "vae", "text_encoder"):
        if not any((path / part).glob("*.safetensors")):
            raise InputError(f"{path / part}: no .safetensors weights; scanside reads weights "
                             "only from safetensors, never from pickled .bin/.ckpt files (loading "
                             "a pickle can run code) — convert the checkpoint with diffusers' "
                             "save_pretrained(safe_serialization=True)")


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
        unet=UNet2DConditionModel.from_pretrained(path / "unet", low_cpu_mem_usage=False,
                                                  use_safetensors=True).eval(),
        vae=AutoencoderKL.from_pretrained(path / "vae", low_cpu_mem_usage=False,
                                          use_safetensors=True).eval(),
        text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder",
                                                   use_safetensors=True).eval(),
        tokenizer=read_tokenizer(path / "tokenizer"),
        scheduler_config=json.loads((path / "scheduler" / "scheduler_config.json").read_text()),
    )


SETTINGS_FILE = "scanside.json"
ENHANCE_KEYS = {"prompt": str, "negative_prompt": str, "strength": float, "steps": int,
                "guidance": float, "scheduler": str, "ensemble": int, "noise_factor": float}


def read_settings(path: Path, section: str) -> Any:
    """One section of MODEL_DIR/scanside.json (the model's own settings), None without it."""
    file = path / SETTINGS_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8")).get(section)
    except (ValueError, AttributeError) as exc:
        raise InputError(f"{file}: not a JSON object ({exc}); fix or remove it") from None


def read_noise_level(path: Path) -> "dict[str, Any] | None":
    """A noise-conditioned model's noise-level channel (runtime/noise_level.py), if any."""
    from scanside.runtime import noise_level

    given = read_settings(path, "noise_level")
    return None if given is None else noise_level.check_spec(given, str(path / SETTINGS_FILE))


def read_enhance_defaults(path: Path) -> dict[str, Any]:
    """The model's recommended enhancement settings from MODEL_DIR/scanside.json, if any."""
    file = path / SETTINGS_FILE
    given = read_settings(path, "enhance") or {}
    unknown = set(given) - set(ENHANCE_KEYS)
    if unknown:
        raise InputError(f"{file}: unknown enhance settings {sorted(unknown)}; allowed: "
                         f"{sorted(ENHANCE_KEYS)}")
    try:
        settings = {key: ENHANCE_KEYS[key](value) for key, value in given.items()}
    except (TypeError, ValueError) as exc:
        raise InputError(f"{file}: bad enhance setting ({exc})") from None
    try:
        Sampling(**settings)  # the checks a caller's settings get, before the engine is built
    except InputError as exc:
        raise InputError(f"{file}: enhance.{exc}") from None
    return settings


def read_task(path: Path) -> dict[str, Any]:
    """What the model does, from MODEL_DIR/scanside.json, as Manifest fields: ``task``
    ("enhance" unless it says "segment"), a segmentation model's ``segment_defaults`` (checked
    as a caller's settings are) and its ``labels`` (each with its codes: a label without one
    is refused here, before anything is exported, with the fix), and the maps' calibration."""
    from scanside.runtime import segment
    from scanside.runtime.artifacts import TASKS

    file = path / SETTINGS_FILE
    task = read_settings(path, "task") or "enhance"
    if task not in TASKS:
        raise InputError(f"{file}: task {task!r}; scanside exports {', '.join(TASKS)}")
    maps = read_settings(path, "maps")
    if task == "enhance":
        return {"task": task, "maps": maps}
    labels = segment.check_labels(read_settings(path, "labels") or (), str(file))
    given = dict(read_settings(path, "segment") or {})
    settings, seeds, threshold = segment.split_defaults(given)
    try:
        Sampling(**settings)
    except (InputError, TypeError) as exc:
        raise InputError(f"{file}: segment.{exc}") from None
    return {"task": task, "labels": tuple(labels), "maps": maps,
            "segment_defaults": {**settings, "seeds": seeds, "threshold": threshold}}
