"""What the benchmark ran on: CPU, GPU, memory, library versions."""

from __future__ import annotations

import platform
import resource
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Optional

from scanside.runtime.host import cpu_info, host_class

__all__ = ["cpu_info", "cpu_label", "host_class", "describe"]

LIBRARIES = ("scanside", "numpy", "onnxruntime", "onnxruntime-gpu", "pydicom", "torch",
             "diffusers", "transformers", "onnx", "optimum-onnx", "tensorrt")


def cpu_label(cpu: dict[str, Any]) -> str:
    """One line for a report: model, family/model numbers, host class, cores."""
    ident = cpu.get("id") or {}
    numbers = (f" (family {ident['cpu_family']} model {ident['model']})"
               if "cpu_family" in ident and "model" in ident else "")
    return (f"{cpu.get('model')}{numbers}, {cpu.get('host_class', '?')}, "
            f"{cpu.get('usable_cores')} usable cores")


def gpu_info() -> Optional[list[dict[str, str]]]:
    """GPUs as nvidia-smi reports them; None where there is no NVIDIA driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split(", ") for line in out.stdout.strip().splitlines() if line.strip()]
    return [{"name": r[0], "memory_total": r[1], "driver": r[2]} for r in rows if len(r) == 3]


def gpu_memory_used_mib() -> Optional[float]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def device_memory_in_use() -> Optional[int]:
    """Bytes in use on GPU 0 (all processes) through the CUDA runtime, where there is one. Unlike
    nvidia-smi this also works on a Jetson, whose GPU shares the system memory."""
    try:
        from scanside.runtime.engines.devices import cudart

        err, free, total = cudart().cudaMemGetInfo()
        return int(total - free) if int(err) == 0 else None
    except Exception:  # noqa: BLE001 - no cuda-python, no driver, no device: not measured
        return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * 1024 if platform.system() == "Linux" else peak


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def describe() -> dict[str, Any]:
    return {"cpu": cpu_info(), "gpu": gpu_info(), "python": platform.python_version(),
            "os": platform.platform(), "libraries": library_versions()}
