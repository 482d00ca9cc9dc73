"""The CPU this process runs on: model, identification numbers, instruction sets, and the
host class that decides which int8 and float kernels ONNX Runtime's MLAS can reach. The
benchmarks label every figure with it; an int8 engine records the class it was tuned on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# Instruction sets that decide which kernels ONNX Runtime and TensorRT can use.
INTERESTING_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                     "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
                     "asimd", "asimddp", "sve", "i8mm", "bf16")


def host_class(flags: "set[str] | list[str] | None" = None, machine: str = "") -> str:
    """The matrix unit int8 and fp32 kernels can reach: what separates two hosts' figures
    (a cloud VM's model name is often just "AMD EPYC")."""
    if flags is None:
        return cpu_info()["host_class"]
    flags = set(flags)
    for flag, name in (("amx_int8", "x86-amx"), ("avx512_vnni", "x86-avx512-vnni"),
                       ("avx_vnni", "x86-avx-vnni"), ("avx512f", "x86-avx512"),
                       ("avx2", "x86-avx2"), ("i8mm", "arm64-i8mm"), ("asimddp", "arm64-dotprod")):
        if flag in flags:
            return name
    return machine or platform.machine()


# Host classes whose u8 x s8 int8 products go through (v)pmaddubsw, which adds two products
# into a saturating 16-bit lane (2 x 255 x 127 overflows it): x86 without VNNI. Plain "x86_64"
# is a CPU with neither AVX2 nor VNNI (SSE4.1). See scanside/export/precision.py.
SATURATING_HOSTS = frozenset({"x86-avx2", "x86-avx512", "x86_64", "AMD64"})


def saturates(host: "str | None" = None) -> bool:
    """Whether ONNX Runtime's u8 x s8 int8 kernels can overflow on ``host`` (a host class;
    default: this CPU's)."""
    return (host_class() if host is None else host) in SATURATING_HOSTS


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
