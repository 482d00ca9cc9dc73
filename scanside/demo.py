"""``scanside demo``: the whole path on a model built here — build, export, enhance, look.

The demo model is the ``tiny`` recipe: Stable Diffusion's architecture with random weights, so
its "enhanced" image is noise. It proves the machinery runs end to end on this machine; it is
not an enhancement model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from scanside.files import atomic_path

log = logging.getLogger(__name__)
PROMPT = "low-dose CT, denoise"


def phantom(size: int = 64, seed: int = 0) -> np.ndarray:
    """A CT-like test image in [0, 1]: body ellipse, two lungs, a bright spine, noise."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    image = np.where((x / 0.9) ** 2 + (y / 0.7) ** 2 < 1, 0.55, 0.0)
    for cx in (-0.4, 0.4):
        image = np.where(((x - cx) / 0.28) ** 2 + (y / 0.45) ** 2 < 1, 0.15, image)
    image = np.where(x**2 + (y - 0.45) ** 2 < 0.12**2, 0.95, image)
    noisy = image + 0.06 * np.random.default_rng(seed).standard_normal(image.shape)
    return np.clip(noisy, 0, 1).astype(np.float32)


def ensure_model(model_dir: Path) -> None:
    from scanside.export.checkpoint import REQUIRED
    from scanside.models import build

    if all((model_dir / name).is_file() for name in REQUIRED):
        return
    print(f"building the tiny demo model in {model_dir} ...")
    build("tiny", model_dir, seed=0)


def ensure_engine(model_dir: Path, engine_dir: Path) -> None:
    """Export unless the engine already holds this exact model (keyed by content hash)."""
    from scanside.errors import EngineError
    from scanside.export import export_model
    from scanside.files import folder_hash
    from scanside.runtime.artifacts import read_manifest

    try:
        if read_manifest(engine_dir).source_hash == folder_hash(model_dir):
            return
    except EngineError:
        pass
    print(f"exporting {model_dir} -> {engine_dir} ...")
    export_model(model_dir, engine_dir, overwrite=True, progress=True)


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path, overwrite=True) as tmp:
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(tmp, "PNG")


def run_demo(workdir: Path) -> Path:
    from scanside import Pipeline

    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, engine_dir = workdir / "tiny-model", workdir / "tiny-engine"
    ensure_model(model_dir)
    ensure_engine(model_dir, engine_dir)
    image = phantom()
    pipe = Pipeline.load(engine_dir)
    started = time.perf_counter()
    result = pipe.enhance(image, prompt=PROMPT, strength=0.5, steps=20, seed=0, progress=True)
    seconds = time.perf_counter() - started
    save_png(workdir / "input.png", image)
    save_png(workdir / "enhanced.png", result)
    save_png(workdir / "side_by_side.png", np.concatenate([image, result], axis=1))
    print(f"enhanced a {image.shape[0]}x{image.shape[1]} phantom in {seconds:.2f} s "
          f"(20-step schedule, strength 0.5, CPU)")
    print(f"input:    {workdir / 'input.png'}")
    print(f"result:   {workdir / 'enhanced.png'}   (both side by side: {workdir / 'side_by_side.png'})")
    print("note: the demo model has random weights, so the result is noise by design; "
          "it shows the export and runtime work end to end, not an enhancement.")
    return workdir / "enhanced.png"
