"""scanside: diffusion enhancement of medical images next to the scanner."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scanside")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from .runtime import Pipeline, Sampling  # noqa: E402

__all__ = ["Pipeline", "Sampling", "__version__"]
