"""The one protocol every backend adapter implements, and the backend choice."""

from __future__ import annotations

import enum
from typing import Mapping, Protocol

import numpy as np

from scanside.errors import InputError
from scanside.runtime.iospec import IOSpec


class Backend(str, enum.Enum):
    CPU = "cpu"  # ONNX Runtime, CPU execution provider
    CUDA = "cuda"  # ONNX Runtime, CUDA execution provider (onnxruntime-gpu)
    ORT_TENSORRT = "ort-tensorrt"  # ONNX Runtime, TensorRT execution provider (onnxruntime-gpu)
    TENSORRT = "tensorrt"  # native TensorRT plans (tensorrt + cuda-python)
    AUTO = "auto"  # the fastest present (devices.choose says which and why)

    @classmethod
    def parse(cls, value: "str | Backend") -> "Backend":
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(b.value for b in cls)
            raise InputError(f"backend: {value!r} is not a backend; choose one of {names}") from None


class Engine(Protocol):
    spec: IOSpec

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; feeds and outputs are keyed by the IOSpec's tensor names."""
        ...
