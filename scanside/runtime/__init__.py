"""The lean runtime: numpy + ONNX Runtime (or TensorRT), arrays in and arrays out. Never
imports torch, diffusers, transformers or any higher layer of scanside (export, dicom, cli...):
tests/test_layers.py reads every import; tests/runtime/test_import_isolation.py runs it with
torch, diffusers, transformers and scanside.export made unimportable."""

from .pipeline import Pipeline
from .sampling import Sampling

__all__ = ["Pipeline", "Sampling"]
