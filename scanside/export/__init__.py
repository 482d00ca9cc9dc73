"""The export stage (needs the ``[export]`` extra: torch, diffusers, transformers, onnx)."""

import warnings

# diffusers warns at import on every machine without CUDA; nothing a user can act on.
warnings.filterwarnings("ignore", message="CUDA is not available or torch_xla is imported")

from .pipeline import export_model  # noqa: E402

__all__ = ["export_model"]
