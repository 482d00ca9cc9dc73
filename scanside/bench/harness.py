"""``scanside bench``: per-stage latency of one engine directory.

The protocol: speed and memory are measured here, never asserted in timed tests. Warm up
(``--warmup`` runs, untimed), then time each stage separately over ``--repeat`` runs — text
encoder, VAE encode, every UNet step, scheduler overhead, VAE decode and, with ``--dicom``,
DICOM read and write — and report each stage's median, p90 and min, peak memory, the machine,
backend, precision and library versions, and FLOPs against the peak measured in the same run.
One run is one pass through the pipeline (one view: see ``one_run``); the JSON records how
many passes each timed run actually made."""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from scanside.errors import InputError
from scanside.runtime.engines import GpuOptions
from scanside.runtime.iospec import size_bindings
from scanside.runtime.sampling import Sampling
from scanside.runtime.timing import Recorder

from . import machine, peak
from .stats import summary

log = logging.getLogger(__name__)
FORMAT = "scanside-bench"
FORMAT_VERSION = 1


class Task(str, enum.Enum):
    ENHANCE = "enhance"
    GENERATE = "generate"


@dataclass(frozen=True)
class Settings:
    task: Task = Task.ENHANCE
    size: Optional[int] = None  # pixels, square; default: the engine's size
    steps: int = 20
    strength: float = 0.3
    guidance: float = 1.0
    scheduler: Optional[str] = None
    backend: str = "cpu"
    repeat: int = 3
    warmup: int = 1
    seed: int = 0
    dicom: Optional[Path] = None  # time DICOM read/write with this file as the input
    threads: Optional[int] = None
    vae_tile: Optional[int] = None  # see Pipeline.vae_tile
    gpu: GpuOptions = field(default_factory=GpuOptions)  # --cuda-graph, --low-memory

    def check(self) -> None:
        if self.repeat < 1 or self.warmup < 0:
            raise InputError(f"repeat: {self.repeat}, warmup: {self.warmup}; need repeat >= 1 and "
                             "warmup >= 0")


def test_image(size: int, seed: int) -> np.ndarray:
    """A smooth image with noise: what the VAE sees matters little for latency."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    image = 0.5 + 0.3 * np.sin(9 * x) * np.cos(7 * y) + 0.05 * rng.standard_normal((size, size))
    return np.clip(image, 0, 1).astype(np.float32)


def one_run(pipe, settings: Settings, size: int) -> int:
    """One timed run; returns how many images it enhanced or generated (a multi-frame DICOM
    file: one per frame)."""
    pipe.forget_prompts()  # the text encoder is a stage: time it every run
    sampling = dict(prompt="low-dose CT, denoise", steps=settings.steps, guidance=settings.guidance,
                    seed=settings.seed, scheduler=settings.scheduler)
    if settings.task is Task.GENERATE and settings.dicom is None:
        pipe.generate(height=size, width=size, **sampling)
        return 1
    # One pass: a model whose manifest asks for a self-ensemble (enhance_defaults.ensemble)
    # would otherwise repeat every stage once per view, and the peers it is compared with run
    # a single pass. run_bench counts the passes each run made and records them.
    enhance = Sampling.of(**sampling, strength=settings.strength, ensemble=1)
    if settings.dicom is not None:
        return dicom_run(pipe, settings, enhance)
    pipe.enhance(test_image(size, settings.seed), enhance)
    return 1


def passes_per_image(runs: list[dict[str, list[float]]], images: list[int]) -> int:
    """Denoising passes per image, counted from the timed runs: every pass (one view of one
    image, or one generated image) runs its loop as one 'loop' stage. The same in every run."""
    counts = {len(run.get("loop", [])) / max(n, 1) for run, n in zip(runs, images)}
    if len(counts) != 1 or not float(next(iter(counts))).is_integer():
        raise RuntimeError(f"scanside bench: the timed runs made different numbers of passes "
                           f"per image ({sorted(counts)}); the stage figures would mix them")
    return int(next(iter(counts)))


def dicom_run(pipe, settings: Settings, sampling: Sampling) -> int:
    """Enhance one DICOM file, timing its read and its derived write as stages; returns its
    number of frames."""
    import tempfile

    from scanside.dicom.read import read_header, read_pixels
    from scanside.dicom.series import describe, enhance_frames
    from scanside.dicom.write import Derivation, derive, save, series_number

    with pipe.timer.stage("dicom_read"):  # header checks and the file; frames decode lazily
        ds = read_pixels(read_header(settings.dicom))
    stored, window, _ = enhance_frames(pipe, ds, settings.dicom, None, sampling)
    with tempfile.TemporaryDirectory() as tmp, pipe.timer.stage("dicom_write"):
        derived = derive(ds, stored, Derivation(describe(pipe, window, sampling), "1.2.3",
                                                series_number(ds)))
        save(derived, Path(tmp) / "out.dcm")
    return int(len(stored))


def stage_table(runs: list[dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Per-stage summaries; 'scheduler' is the loop minus its UNet and text-encoder calls."""
    stages: dict[str, list[float]] = {}
    for run in runs:
        for name in ("text", "vae_encode", "vae_decode", "dicom_read", "dicom_write", "total"):
            if name in run:
                stages.setdefault(name, []).append(sum(run[name]))
        stages.setdefault("unet_step", []).extend(run.get("unet", []))
        overhead = sum(run.get("loop", [])) - sum(run.get("unet", [])) - sum(run.get("text", []))
        stages.setdefault("scheduler", []).append(max(overhead, 0.0))
        stages.setdefault("unet_total", []).append(sum(run.get("unet", [])))
    return {name: summary(values) for name, values in stages.items()}


STAGE_COMPONENTS = {"text": "text_encoder", "vae_encode": "vae_encoder", "unet_step": "unet",
                    "vae_decode": "vae_decoder"}


def flops_per_stage(pipe, size: int, guidance: float) -> dict[str, Optional[int]]:
    try:
        from .flops import count_flops
    except ImportError:
        return {}
    sizes = size_bindings(size, size, pipe.manifest.vae_factor, unet_batch=2 if guidance > 1 else 1)
    files = dict(STAGE_COMPONENTS)
    if pipe.manifest.vae_affine:
        # The VAE runs as its measured per-pixel map, not its graphs: a few multiply-adds a
        # pixel, nothing to set beside a matrix unit's peak.
        files = {k: v for k, v in files.items() if not v.startswith("vae_")}
    out: dict[str, Optional[int]] = {}
    for stage, component in files.items():
        try:
            count = count_flops(pipe.engine_dir / pipe.manifest.components[component].file, sizes)
        except ImportError:
            log.warning("onnx is not installed: no FLOP counts (pip install onnx)")
            return {}
        if count.unknown_nodes:
            log.warning("%s: %d matmul/conv nodes of unknown shape; its FLOP count is partial "
                        "(pip install sympy for ONNX Runtime's symbolic shape inference)",
                        component, count.unknown_nodes)
        out[stage] = count.flops
    return out


def run_bench(engine_dir: Path, settings: Settings, progress: bool = True) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from scanside import Pipeline

    settings.check()
    rss_before = machine.peak_rss_bytes()
    pipe = Pipeline.load(engine_dir, settings.backend, threads=settings.threads,
                         vae_tile=settings.vae_tile, gpu=settings.gpu)
    on_gpu = pipe.backend.value != "cpu"
    device_before = machine.device_memory_in_use() if on_gpu else None
    size = settings.size or pipe.manifest.height
    grid = pipe.grid(*pipe.prepare(test_image(size, 0)).pixels.shape[-2:])
    recorder = Recorder()
    pipe.timer = recorder
    for _ in tqdm(range(settings.warmup), desc="warm-up", disable=not progress):
        one_run(pipe, settings, size)
    recorder.take()
    runs, images = [], []
    for _ in tqdm(range(settings.repeat), desc="timed runs", disable=not progress):
        start = time.perf_counter()
        images.append(one_run(pipe, settings, size))
        total = time.perf_counter() - start
        run = recorder.take()
        run["total"] = [total]
        runs.append(run)
    passes = passes_per_image(runs, images)
    peak_rss = machine.peak_rss_bytes()  # before FLOP counting loads the graphs again
    gpu_used = machine.gpu_memory_used_mib()
    device_after = machine.device_memory_in_use() if on_gpu else None
    stages = stage_table(runs)
    flops = flops_per_stage(pipe, size, settings.guidance)
    precisions = {stage: pipe.manifest.components[c].precision.value
                  for stage, c in STAGE_COMPONENTS.items()}
    measured_peak = peak.measure(threads=settings.threads, int8="int8" in precisions.values())
    for name, count in flops.items():
        if name in stages and count:
            # An int8 component against the int8 peak (its MACs run as u8 x s8 products).
            int8 = precisions[name] == "int8" and "int8_gops" in measured_peak
            stages[name]["gflop"] = count / 1e9
            stages[name]["gflops_achieved"] = count / stages[name]["median"] / 1e9
            stages[name]["peak_used"] = "int8" if int8 else "float32"
            stages[name]["fraction_of_peak"] = stages[name]["gflops_achieved"] / (
                measured_peak["int8_gops"] if int8 else measured_peak["gflops"])
    weights = sum(c.bytes for c in pipe.manifest.components.values())
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "engine": str(engine_dir), "model_hash": pipe.manifest.source_hash,
        "precision": pipe.manifest.precision.value, "backend": pipe.backend.value,
        "backend_requested": settings.backend,
        "settings": {"task": settings.task.value, "size": size, "steps": settings.steps,
                     "unet_steps": int(len(runs[0].get("unet", []))),
                     "strength": settings.strength, "guidance": settings.guidance,
                     # Measured, not assumed: denoising passes per image in each timed run
                     # (views of the self-ensemble when enhancing; 1 by design).
                     "ensemble": passes if settings.task is Task.ENHANCE else None,
                     "passes_per_image": passes, "images_per_run": images[0],
                     "scheduler": pipe.plan(settings.scheduler, settings.steps,
                                            settings.strength if settings.task is Task.ENHANCE else 1.0).algorithm,
                     "repeat": settings.repeat, "warmup": settings.warmup,
                     "tiles": len(grid) if grid is not None else 1,
                     "dicom": str(settings.dicom) if settings.dicom else None},
        "stages": stages,
        "memory": {"peak_rss_bytes": peak_rss, "rss_before_load_bytes": rss_before,
                   "engine_weight_bytes": weights, "peak_rss_over_weights": peak_rss / weights,
                   "gpu_used_mib": gpu_used,
                   # What the pipeline took on the device after loading (engines, buffers,
                   # caches), from the CUDA runtime; None on the CPU backend.
                   "device_memory_taken_bytes": (device_after - device_before
                                                 if device_before is not None
                                                 and device_after is not None else None)},
        "peak": measured_peak,
        "machine": machine.describe(),
    }
