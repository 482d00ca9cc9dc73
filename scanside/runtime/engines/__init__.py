"""Backend adapters behind one protocol: ``run(feeds) -> outputs``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from scanside.runtime.iospec import IOSpec

from .base import Backend, Engine


@dataclass(frozen=True)
class GpuOptions:
    """How GPU backends run (ignored on the CPU)."""

    cuda_graph: bool = False  # capture and replay calls of fixed shape
    low_memory: bool = False  # native TensorRT: one engine's activations at a time


def open_engine(engine_dir: Path, component: Any, source_hash: str, backend: Backend,
                threads: Optional[int] = None, gpu: GpuOptions = GpuOptions(),
                scratch: Any = None) -> Engine:
    """The engine of one manifest ``component`` (scanside.runtime.artifacts.Component) on
    ``backend`` (already resolved: not AUTO)."""
    path = engine_dir / component.file
    spec: IOSpec = component.spec
    precision = component.precision.value
    if backend is Backend.TENSORRT:
        from .tensorrt import TrtEngine, cache_root, ensure_plan

        plan = ensure_plan(cache_root(engine_dir, source_hash), component.name, path,
                           component.sha256, spec, precision)
        return TrtEngine(plan, spec, cuda_graph=gpu.cuda_graph,
                         scratch=scratch if gpu.low_memory else None)
    from .onnxruntime import OrtEngine, exact_int8

    cache = None
    if backend is Backend.ORT_TENSORRT:
        from .tensorrt import cache_root

        cache = cache_root(engine_dir, source_hash) / "ort-ep"
    return OrtEngine(path, spec, backend, threads, precision=precision, cache_dir=cache,
                     cuda_graph=gpu.cuda_graph,
                     exact_int8=backend is Backend.CPU and exact_int8(component))


__all__ = ["Backend", "Engine", "GpuOptions", "open_engine"]
