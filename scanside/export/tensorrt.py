"""TensorRT from the export side: plans built ahead of time on this device
(``scanside export ... --tensorrt``) and the trtexec script for sites that build with
JetPack's own tools (``--trtexec-script``). The plan logic itself is the runtime's
(scanside.runtime.engines.tensorrt), since a plan can also be built on first load.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from scanside.errors import InputError
from scanside.runtime.artifacts import Manifest
from scanside.runtime.engines import Backend
from scanside.runtime.engines.devices import unfit_backends
from scanside.runtime.engines.tensorrt import cache_root, ensure_plan, trtexec_command

SCRIPT_HEADER = """#!/usr/bin/env bash
# TensorRT plans for {engine} with trtexec, written by `scanside export --trtexec-script`.
# Run it on the device that will run the plans (a plan is specific to its GPU and TensorRT
# version), from any folder. Precision follows the exported graphs: {precision}.
# TensorRT {major}.x command lines{compat}. Check with: trtexec --loadEngine=PLAN
set -euo pipefail
ENGINE={engine_q}
mkdir -p "$ENGINE/tensorrt/trtexec"
"""


def check_for_tensorrt(engine_dir: Path, manifest: Manifest) -> None:
    reason = unfit_backends(manifest, engine_dir).get(Backend.TENSORRT)
    if reason:
        raise InputError(f"tensorrt: {reason}")


def trtexec_script(engine_dir: Path, manifest: Manifest, trt_major: int = 10) -> str:
    """A bash script with one trtexec command per component."""
    check_for_tensorrt(engine_dir, manifest)
    compat = "" if trt_major >= 10 else " (weakly typed: --fp16/--int8 from the manifest)"
    lines = [SCRIPT_HEADER.format(engine=engine_dir, engine_q=shlex.quote(str(engine_dir)),
                                  precision=manifest.precision.value, major=trt_major,
                                  compat=compat)]
    for name, component in manifest.components.items():
        cmd = trtexec_command(Path("$ENGINE") / component.file,
                              Path("$ENGINE/tensorrt/trtexec") / f"{name}.plan", component.spec,
                              component.precision.value, trt_major,
                              Path("$ENGINE/tensorrt/trtexec/timing.cache"))
        # $ENGINE stays unquoted-expandable inside double quotes.
        lines.append(" \\\n    ".join(f'"{part}"' if "$ENGINE" in part else shlex.quote(part)
                                       for part in cmd) + "\n")
    return "\n".join(lines)


def build_plans(engine_dir: Path, manifest: Manifest) -> list[Path]:
    """Build (or find cached) every component's plan for this GPU now."""
    check_for_tensorrt(engine_dir, manifest)
    root = cache_root(engine_dir, manifest.source_hash)
    return [ensure_plan(root, name, engine_dir / c.file, c.sha256, c.spec, c.precision.value)
            for name, c in manifest.components.items()]
