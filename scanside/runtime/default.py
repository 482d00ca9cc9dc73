"""Where the built-in models live: scanside's own low-dose CT model and its lesion-candidate
model (``lesion_model/``, the same layout; scanside/training/train.py, task "lesions"),
shipped in the package.

``default_model/checkpoint`` is its diffusers folder (fp16 safetensors, to re-export at any
precision); ``default_model/engine`` its fp32 ONNX engine, which the torch-free base install
runs when no engine directory is given. See scanside/training/train.py for how it was made.
"""

from __future__ import annotations

from pathlib import Path

from scanside.errors import EngineError

from .artifacts import MANIFEST

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "default_model"
LESION_MODEL = Path(__file__).resolve().parent.parent / "lesion_model"


def default_checkpoint_dir() -> Path:
    return DEFAULT_MODEL / "checkpoint"


def default_engine_dir() -> Path:
    return shipped_engine(DEFAULT_MODEL, "the default model's engine",
                          "give an engine directory (--engine)")


def default_lesion_engine_dir() -> Path:
    """The built-in lesion-candidate model's engine (`scanside annotate` without --engine)."""
    return shipped_engine(LESION_MODEL, "the built-in lesion-candidate model",
                          "give a segmentation engine (--engine)")


def shipped_engine(model: Path, what: str, instead: str) -> Path:
    """MODEL/engine, or an EngineError saying ``what`` is missing from the install."""
    engine = model / "engine"
    if not (engine / MANIFEST).is_file():
        raise EngineError(f"{engine}: {what} is missing from this install; reinstall scanside, "
                          f"or {instead}")
    return engine
