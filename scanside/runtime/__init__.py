"""The lean runtime: numpy + ONNX Runtime (or TensorRT), arrays in and arrays out. Never
imports torch, diffusers, transformers or any higher layer of scanside (export, dicom, cli...):
tests/runtime/test_import_isolation.py runs it with those blocked, tests/test_layers.py reads
every import."""

from .pipeline import Pipeline
from .sampling import Sampling

__all__ = ["Pipeline", "Sampling"]
