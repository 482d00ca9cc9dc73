"""ONNX Runtime adapter: one InferenceSession per component."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from scanside.errors import BackendUnavailable
from scanside.runtime.iospec import IOSpec

from .base import Backend

log = logging.getLogger(__name__)
PROVIDERS = {Backend.CPU: "CPUExecutionProvider", Backend.CUDA: "CUDAExecutionProvider"}


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's default spreads over every logical CPU; on SMT machines physical cores are faster,
    # and a caller sharing the scanner PC with other work can cap it.
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.log_severity_level = 3
    return options


class OrtEngine:
    def __init__(self, path: Path, spec: IOSpec, backend: Backend, threads: int | None = None):
        provider = PROVIDERS[backend]
        available = ort.get_available_providers()
        if provider not in available:
            raise BackendUnavailable(
                f"backend {backend.value}: ONNX Runtime here offers {available}, not {provider}; "
                "install onnxruntime-gpu (pip install 'scanside[gpu]') on a CUDA machine, "
                "or use backend='cpu'"
            )
        self.spec = spec
        self.session = ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=[provider]
        )
        self.output_names = [t.name for t in spec.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.spec.check_feeds(feeds)
        outputs = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, outputs))
