"""The lean runtime: numpy + ONNX Runtime. Never imports torch, diffusers, transformers or
scanside.export (a test checks it with those imports blocked)."""

from .pipeline import Pipeline

__all__ = ["Pipeline"]
