"""The lean runtime: numpy + ONNX Runtime. Never imports torch, diffusers, transformers or
scanside.export (a test checks it with those imports blocked)."""

from .pipeline import Pipeline
from .sampling import Sampling

__all__ = ["Pipeline", "Sampling"]
