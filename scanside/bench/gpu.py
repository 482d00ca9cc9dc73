"""The first figures on a GPU, in one prepared run (``python -m scanside.bench.gpu``; issue 41).

Made for a lent GPU machine whose time is short (bench/gpu/README.md: how the wheels get
there, the calls, then this). Each step writes its figures into ``OUT/gpu.json`` as soon as
it ends, so a run cut short still returns what it measured; a step that fails records its
error and the next one runs; a step that would not finish before ``--deadline`` is skipped,
saying so. Steps, most wanted first:

1. ``versions``: GPU, driver, CUDA, cuDNN, ONNX Runtime and its providers.
2. ``gpu_tests``: ``pytest -m gpu`` (the GPU backends against the CPU on the tiny engine).
3. ``parity``: the built-in model at fp32 (the shipped engine) and a static 512² fp16 export
   of it, on ``--backend`` against the CPU backend (the fp16 one against a static fp32 export
   of the same shape), on CT_small and 693_J2KI at 40 HU of simulated noise: max |diff| in HU
   and PSNR between them (targets: 0.5 HU at fp32, 3 HU at fp16).
4. ``latency``: ``Pipeline.enhance`` of the 512² slice, warm, median of ``--repeat``, with and
   without CUDA graphs, fp32 and fp16; device memory taken.
5. ``series``: 100 slices of 512² CT through ``scanside enhance``'s batch with 1, 2 and 4
   workers (slices per second), and the same batch with an identity model: the CPU side
   (decode, write) alone.
6. ``sd15``: the SD 1.5-shaped model built and exported at fp16 (plain and fused attention,
   export time), img2img at 512², strength 0.3, 20 steps, through ``scanside bench`` and
   through diffusers on torch fp16 on the same GPU (same weights); peak device memory.

``--backend cpu --quick`` runs every step's plumbing on a CPU in minutes (small sizes, the
tiny model in place of the SD 1.5 shape): what the repository's CI-less GPU path is checked
with before a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).with_name("peers.py")


class Budget:
    """The run's deadline: a step starts only if its estimate fits in what is left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class DevicePeak:
    """The GPU's memory in use, sampled every 20 ms in a thread (NVML, all processes: the
    runs here are alone on the machine); ``peak - base`` is what the work inside took."""

    def __init__(self) -> None:
        self.base = self.peak = self.used()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    @staticmethod
    def used() -> Optional[int]:
        try:
            import pynvml

            pynvml.nvmlInit()
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
        except Exception:  # noqa: BLE001 - no NVML (a CPU run): no figure
            return None

    def sample(self) -> None:
        while not self.stopping.wait(0.02):
            now = self.used()
            if now is not None and (self.peak is None or now > self.peak):
                self.peak = now

    def __enter__(self) -> "DevicePeak":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()
        self.thread.join()

    @property
    def taken_bytes(self) -> Optional[int]:
        return None if self.base is None or self.peak is None else self.peak - self.base


def run(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env, **kwargs)


def tail(text: str, chars: int = 3000) -> str:
    return text[-chars:]


# -- the steps ---------------------------------------------------------------------------------
def versions(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort

    out: dict[str, Any] = {"python": platform.python_version(), "onnxruntime": ort.__version__,
                           "providers": ort.get_available_providers(), "device": ort.get_device()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except OSError as exc:
        out["nvidia_smi"] = f"not found ({exc.strerror})"
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        out["torch"] = None
    return out


def gpu_tests(args: argparse.Namespace) -> dict[str, Any]:
    done = run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p",
                "no:cacheprovider", "tests/runtime/test_gpu.py"], timeout=args.step_timeout)
    summary = re.findall(r"(\d+) (passed|failed|skipped|error)", done.stdout.splitlines()[-1]
                         if done.stdout else "")
    return {"returncode": done.returncode, "counts": {k: int(n) for n, k in summary},
            "output_tail": tail(done.stdout + done.stderr)}


def export_static(work: Path, precision: str, args: argparse.Namespace) -> tuple[Path, float]:
    """The built-in model's checkpoint exported static at 512² (reduced precision is checked
    at one size; a smaller slice is padded to it): fp16, and fp32 as its like-for-like
    reference (the shipped engine is dynamic, which pads differently)."""
    from scanside.runtime.default import DEFAULT_MODEL

    out = work / f"builtin-{precision}-512"
    if (out / "manifest.json").is_file():
        return out, 0.0
    started = time.perf_counter()
    done = run([sys.executable, "-m", "scanside", "export", str(DEFAULT_MODEL / "checkpoint"),
                "--height", "512", "--width", "512", "--precision", precision, "--out", str(out)],
               timeout=args.step_timeout)
    if done.returncode:
        raise RuntimeError(f"{precision} export failed: {tail(done.stdout + done.stderr, 1500)}")
    return out, time.perf_counter() - started


def enhancer(engine: Optional[Path], backend: str, cuda_graph: bool = False):
    from scanside import Pipeline, Sampling
    from scanside.runtime.engines import GpuOptions
    from scanside.training.evaluate import HU_WINDOW, to_unit

    pipe = Pipeline.load(engine, backend, gpu=GpuOptions(cuda_graph=cuda_graph))
    sampling = Sampling()

    def enhance(hu: np.ndarray) -> np.ndarray:
        return HU_WINDOW.from_unit(pipe.enhance(to_unit(hu), sampling))

    return pipe, enhance


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> Optional[float]:
    """dB; None where the two are identical (JSON has no infinity)."""
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return None if mse == 0 else float(10 * np.log10(peak**2 / mse))


def parity(args: argparse.Namespace) -> dict[str, Any]:
    """fp32: the shipped engine on the backend against it on the CPU. fp16: the static fp16
    export on the backend against the static fp32 export on the CPU (same shape, so only
    precision and device differ), and against the shipped engine on the CPU."""
    from scanside.runtime.default import default_engine_dir
    from scanside.training import realct
    from scanside.training.evaluate import DATA_RANGE

    pairs = realct.real_pairs(noise=(40.0,))
    fp16, fp16_s = export_static(args.work, "fp16", args)
    fp32_512, fp32_s = export_static(args.work, "fp32", args)
    shipped = default_engine_dir()
    cpu = {name: {p.name: enhancer(engine, "cpu")[1](p.low) for p in pairs}
           for name, engine in (("shipped", shipped), ("fp32-512", fp32_512))}
    out: dict[str, Any] = {"export_s": {"fp16": fp16_s, "fp32": fp32_s}, "noise_hu": 40.0,
                           "slices": {}}
    for precision, engine, reference in (("fp32", shipped, "shipped"),
                                         ("fp16", fp16, "fp32-512")):
        _, device = enhancer(engine, args.backend)
        for pair in pairs:
            got = device(pair.low)
            ref = cpu[reference][pair.name]
            diff = np.abs(got - ref)
            out["slices"].setdefault(pair.name, {})[precision] = {
                "against": f"{reference} on the CPU", "max_abs_hu": float(diff.max()),
                "mean_abs_hu": float(diff.mean()), "psnr_db_vs_cpu": psnr(got, ref, DATA_RANGE),
                "max_abs_hu_vs_shipped_cpu": float(np.abs(got - cpu["shipped"][pair.name]).max()),
                "psnr_db_vs_reference": psnr(got, pair.full, DATA_RANGE)}
    worst = {p: max(s[p]["max_abs_hu"] for s in out["slices"].values()) for p in ("fp32", "fp16")}
    out["worst_max_abs_hu"] = worst
    out["targets_met"] = {"fp32 <= 0.5 HU": worst["fp32"] <= 0.5, "fp16 <= 3 HU": worst["fp16"] <= 3}
    return out


def slice_512() -> np.ndarray:
    from scanside.training import realct

    (pair,) = realct.real_pairs(names=("693_J2KI.dcm",), noise=(40.0,))
    return pair.low


def latency(args: argparse.Namespace) -> dict[str, Any]:
    from scanside.runtime.default import default_engine_dir

    hu = slice_512()
    fp16, _ = export_static(args.work, "fp16", args)
    out: dict[str, Any] = {"size": list(hu.shape), "repeat": args.repeat}
    graphs = (False, True) if args.backend != "cpu" else (False,)
    for precision, engine in (("fp32", default_engine_dir()), ("fp16", fp16)):
        for graph in graphs:
            with DevicePeak() as peak:
                pipe, enhance = enhancer(engine, args.backend, graph)
                for _ in range(3):
                    enhance(hu)
                times = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    enhance(hu)  # returns host values: the device work is done
                    times.append(time.perf_counter() - started)
            out[f"{precision}{' cuda-graph' if graph else ''}"] = {
                "median_ms": 1000 * float(np.median(times)),
                "p90_ms": 1000 * float(np.percentile(times, 90)),
                "min_ms": 1000 * float(np.min(times)), "backend": pipe.backend.value,
                "device_memory_taken_bytes": peak.taken_bytes}
            del pipe, enhance
    return out


class Identity:
    """A model that returns its input: enhance_series' reading, decoding and writing alone."""

    engine_dir = Path("identity")

    def enhance(self, image: np.ndarray, sampling: Any = None, **_: Any) -> np.ndarray:
        return image

    def describe(self, sampling: Any) -> str:
        return "identity (the CPU side alone)"

    def fingerprint(self, sampling: Any) -> str:
        return "identity"


def series(args: argparse.Namespace) -> dict[str, Any]:
    from scanside.bench.series import run_series, write_series
    from scanside.dicom import enhance_series
    from scanside.runtime.engines import GpuOptions

    out: dict[str, Any] = {"slices": args.slices, "size": args.size, "workers": {}}
    for workers in (1, 2, 4):
        with DevicePeak() as peak:
            result = run_series(None, args.slices, args.size, workers=workers,
                                backend=args.backend, gpu=GpuOptions())
        out["workers"][str(workers)] = {
            "slices_per_second": result["slices_per_second"],
            "seconds_per_slice": result["seconds_per_slice"], "backend": result["backend"],
            "device_memory_taken_bytes": peak.taken_bytes}
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "in"
            source.mkdir()
            write_series(source, args.slices, args.size)
            started = time.perf_counter()
            report = enhance_series([source], Identity(), Path(tmp) / "out", progress=False,
                                    workers=workers)
            seconds = time.perf_counter() - started
        out["workers"][str(workers)]["cpu_side_slices_per_second"] = args.slices / seconds
        out["workers"][str(workers)]["cpu_side_failures"] = len(report.failures)
    return out


def sd15(args: argparse.Namespace) -> dict[str, Any]:
    model = args.work / "sd-model"
    shape = "tiny" if args.quick else "sd15-shaped"
    out: dict[str, Any] = {"model": shape, "size": args.sd_size, "steps": args.sd_steps,
                           "strength": 0.3}
    if not (model / "model_index.json").is_file():
        started = time.perf_counter()
        done = run([sys.executable, "-m", "scanside", "models", "build", shape, str(model)],
                   timeout=args.step_timeout)
        if done.returncode:
            raise RuntimeError(f"build failed: {tail(done.stdout + done.stderr, 1500)}")
        out["build_s"] = time.perf_counter() - started
    for attention in ("plain", "fused"):
        engine = args.work / f"sd-fp16-{attention}"
        started = time.perf_counter()
        done = run([sys.executable, "-m", "scanside", "export", str(model), "--precision", "fp16",
                    "--attention", attention, "--height", str(args.sd_size), "--width",
                    str(args.sd_size), "--out", str(engine), "--overwrite"],
                   timeout=args.step_timeout)
        entry: dict[str, Any] = {"export_s": time.perf_counter() - started}
        out[attention] = entry
        if done.returncode:
            entry["error"] = tail(done.stdout + done.stderr, 1500)
            continue
        for graph in (False, True) if args.backend != "cpu" else (False,):
            report_file = args.work / f"sd-{attention}-{graph}.json"
            with DevicePeak() as peak:
                done = run([sys.executable, "-m", "scanside", "bench", str(engine), "--backend",
                            args.backend, "--size", str(args.sd_size), "--steps",
                            str(args.sd_steps), "--strength", "0.3", "--repeat", "5",
                            "--warmup", "2", "--json", str(report_file),
                            *(["--cuda-graph"] if graph else [])], timeout=args.step_timeout)
            key = "scanside cuda-graph" if graph else "scanside"
            if done.returncode:
                entry[key] = {"error": tail(done.stdout + done.stderr, 1500)}
                continue
            result = json.loads(report_file.read_text())
            entry[key] = {"median_s": result["stages"]["total"]["median"],
                          "unet_step_median_s": result["stages"]["unet_step"]["median"],
                          "backend": result["backend"],
                          "device_memory_taken_bytes": result["memory"].get(
                              "device_memory_taken_bytes"),
                          "device_peak_bytes_sampled": peak.taken_bytes}
    peers_file = args.work / "peers.json"
    device = "cuda" if args.backend != "cpu" else "cpu"
    done = run([sys.executable, str(PEERS), "--model", str(model), "--optimum-dir",
                str(args.work / "optimum-unused"), "--task", "enhance", "--size",
                str(args.sd_size), "--steps", str(args.sd_steps), "--strength", "0.3",
                "--repeat", "5", "--warmup", "2", "--only", "diffusers", "--device", device,
                "--dtype", "fp16" if device == "cuda" else "fp32", "--json", str(peers_file)],
               timeout=args.step_timeout)
    out["diffusers"] = (json.loads(peers_file.read_text())[0] if peers_file.is_file()
                        else {"error": tail(done.stdout + done.stderr, 1500)})
    return out


STEPS: dict[str, tuple[Callable[[argparse.Namespace], dict[str, Any]], float]] = {
    # name: (function, seconds it is expected to need on an H100; --quick on 2 CPU cores)
    "versions": (versions, 10), "gpu_tests": (gpu_tests, 90), "parity": (parity, 90),
    "latency": (latency, 60), "series": (series, 90), "sd15": (sd15, 240)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scanside.bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="cuda", help="the backend measured (default cuda)")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--deadline", type=float, default=480, metavar="S",
                        help="seconds for the whole run; a step that would not fit is skipped")
    parser.add_argument("--steps", default=",".join(STEPS), help="which steps, in this order")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and the tiny model: the plumbing, on a CPU")
    args = parser.parse_args(argv)
    unknown = set(args.steps.split(",")) - set(STEPS)
    if unknown:
        parser.error(f"--steps: unknown {', '.join(sorted(unknown))}; choose from "
                     f"{', '.join(STEPS)}")
    args.repeat, args.slices, args.size = (5, 8, 128) if args.quick else (21, 100, 512)
    args.sd_size, args.sd_steps = (64, 4) if args.quick else (512, 20)
    args.step_timeout = 300 if args.quick else 420
    budget = Budget(args.deadline)
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory(prefix="scanside-gpu-")
    args.work = args.work or Path(scratch.name)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"backend": args.backend, "quick": args.quick, "steps": {}}
    from . import report

    for name in args.steps.split(","):
        step, estimate = STEPS[name]
        if budget.left() < estimate * (0.3 if args.quick else 1):
            results["steps"][name] = {"skipped": f"{budget.left():.0f} s left, needs ~{estimate} s"}
        else:
            started = time.monotonic()
            print(f"[gpu bench] {name} ...", flush=True)
            try:
                results["steps"][name] = step(args)
            except Exception as exc:  # noqa: BLE001 - a failed step must not lose the others
                results["steps"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                          "traceback": tail(traceback.format_exc())}
            results["steps"][name]["seconds"] = time.monotonic() - started
            print(f"[gpu bench] {name}: {json.dumps(results['steps'][name])[:600]}", flush=True)
        report.write_json(results, args.out / "gpu.json")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
