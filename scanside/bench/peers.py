"""The peers scanside is measured against, on the same weights and settings:
diffusers' PyTorch pipelines and Hugging Face Optimum's ONNX Runtime pipelines.

Runs as a standalone script inside the peer environment (see requirements-peers.txt), so it
imports nothing from scanside:
    python peers.py --model MODEL_DIR --optimum-dir DIR --task enhance --size 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np

PROMPT = "low-dose CT, denoise"


def test_image(size: int, seed: int) -> np.ndarray:
    """The same image scanside's harness enhances, as an RGB batch of one."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    image = 0.5 + 0.3 * np.sin(9 * x) * np.cos(7 * y) + 0.05 * rng.standard_normal((size, size))
    gray = np.clip(image, 0, 1).astype(np.float32)
    return np.repeat(gray[None, ..., None], 3, axis=3)  # (1, H, W, 3)


def timed(call, repeat: int, warmup: int, sync=lambda: None) -> dict:
    """``sync``: waits for the device (a GPU's work is asynchronous: without it a run would
    end when its kernels are queued, not done)."""
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    values = np.asarray(times)
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
            "min": float(values.min()), "n": len(times)}


def call_for(pipe, args):
    kwargs = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np")
    if args.task == "enhance":
        image = test_image(args.size, args.seed)
        return lambda: pipe(PROMPT, image=image, strength=args.strength, **kwargs)
    return lambda: pipe(PROMPT, height=args.size, width=args.size, **kwargs)


def run_diffusers(args) -> dict:
    import diffusers
    import torch

    cls = (diffusers.StableDiffusionImg2ImgPipeline if args.task == "enhance"
           else diffusers.StableDiffusionPipeline)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    pipe = cls.from_pretrained(args.model, safety_checker=None, requires_safety_checker=False,
                               torch_dtype=dtype).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        total = timed(call_for(pipe, args), args.repeat, args.warmup,
                      torch.cuda.synchronize if cuda else (lambda: None))
    result = {"name": f"diffusers {version('diffusers')} (torch {torch.__version__}, "
                      f"{args.device}, {args.dtype})", "total": total}
    if cuda:
        result["peak_device_memory_bytes"] = torch.cuda.max_memory_allocated()
    return result


def export_optimum(model: Path, out: Path, task: str) -> None:
    """optimum-cli export, once per model (the folder name carries the model's hash)."""
    done = out / ".complete"
    if done.is_file():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "optimum.commands.optimum_cli", "export", "onnx",
                    "--model", str(model), "--task", task, str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    done.write_text("ok")


def run_optimum(args) -> dict:
    from optimum.onnxruntime import ORTStableDiffusionImg2ImgPipeline, ORTStableDiffusionPipeline

    export_optimum(args.model, args.optimum_dir, "text-to-image")
    cls = ORTStableDiffusionImg2ImgPipeline if args.task == "enhance" else ORTStableDiffusionPipeline
    pipe = cls.from_pretrained(args.optimum_dir)
    pipe.set_progress_bar_config(disable=True)
    total = timed(call_for(pipe, args), args.repeat, args.warmup)
    return {"name": f"optimum-onnx {version('optimum-onnx')} ORT pipeline "
                    f"(onnxruntime {version('onnxruntime')})", "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--optimum-dir", type=Path, required=True)
    parser.add_argument("--task", choices=["enhance", "generate"], default="enhance")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.3)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="diffusers: torch device (cuda on a GPU)")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="diffusers")
    parser.add_argument("--only", choices=["diffusers", "optimum"], action="append")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    results = []
    for name, runner in (("diffusers", run_diffusers), ("optimum", run_optimum)):
        if args.only and name not in args.only:
            continue
        try:
            results.append(runner(args))
        except Exception as exc:  # one peer failing must not hide the other's figure
            results.append({"name": name, "skipped": f"{type(exc).__name__}: {exc}"})
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
