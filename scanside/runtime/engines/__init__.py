"""Backend adapters behind one protocol: ``run(feeds) -> outputs``."""

from __future__ import annotations

from pathlib import Path

from scanside.runtime.iospec import IOSpec

from .base import Backend, Engine


def open_engine(path: Path, spec: IOSpec, backend: Backend, threads: int | None = None) -> Engine:
    from .onnxruntime import OrtEngine

    return OrtEngine(path, spec, backend, threads)


__all__ = ["Backend", "Engine", "open_engine"]
