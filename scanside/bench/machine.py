"""What the benchmark ran on: CPU, GPU, memory, library versions."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

# Instruction sets that decide which kernels ONNX Runtime and TensorRT can use.
INTERESTING_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                     "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
                     "asimd", "asimddp", "sve", "i8mm", "bf16")
LIBRARIES = ("scanside", "numpy", "onnxruntime", "onnxruntime-gpu", "pydicom", "torch",
             "diffusers", "transformers", "onnx", "optimum-onnx", "tensorrt")


def host_class(flags: "set[str] | list[str]", machine: str = "") -> str:
    """The matrix unit int8 and fp32 kernels can reach: what separates two hosts' figures
    (a cloud VM's model name is often just "AMD EPYC")."""
    flags = set(flags)
    for flag, name in (("amx_int8", "x86-amx"), ("avx512_vnni", "x86-avx512-vnni"),
                       ("avx_vnni", "x86-avx-vnni"), ("avx512f", "x86-avx512"),
                       ("avx2", "x86-avx2"), ("i8mm", "arm64-i8mm"), ("asimddp", "arm64-dotprod")):
        if flag in flags:
            return name
    return machine or platform.machine()


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    ident: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and value.strip():
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
            elif key in ("vendor_id", "cpu family", "model", "stepping") and value.strip():
                ident.setdefault(key.replace(" ", "_"), value.strip())
    return {"model": model, "machine": platform.machine(), "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            # vendor, family, model number, stepping: e.g. AMD family 25 is Zen 3/4, 26 Zen 5
            "id": ident, "host_class": host_class(flags, platform.machine()),
            "flags": sorted(f for f in INTERESTING_FLAGS if f in flags)}


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
