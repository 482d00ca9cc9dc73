"""Which backends this machine can run, and the choice behind ``--backend auto``.

Every probe imports lazily and reports *why* a backend is missing (the package, the driver,
the device), so ``auto`` can say what it picked and why the others were not, and an explicit
backend that is absent fails with the install command instead of a traceback. Nothing here
needs a GPU to import or to run: on a machine without one every GPU backend is reported
missing with its reason.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from scanside.errors import BackendUnavailable

from scanside.runtime.artifacts import Attention, Manifest

from .base import Backend

# Fastest first: a native plan has no framework between the call and the kernels; the ORT
# TensorRT provider builds the same kind of plan but keeps ORT's graph partitioning and
# copies; ORT's CUDA provider runs cuDNN/cuBLAS kernels op by op; the CPU is the fallback.
AUTO_ORDER = (Backend.TENSORRT, Backend.ORT_TENSORRT, Backend.CUDA, Backend.CPU)
ORT_PROVIDERS = {Backend.CPU: "CPUExecutionProvider", Backend.CUDA: "CUDAExecutionProvider",
                 Backend.ORT_TENSORRT: "TensorrtExecutionProvider"}
INSTALL = {
    Backend.CUDA: "pip uninstall -y onnxruntime && pip install 'scanside[gpu]' (onnxruntime-gpu, "
                  "whose current releases (1.31) are built for CUDA 13 and cuDNN 9, which the "
                  "machine needs; on a Jetson, the onnxruntime-gpu wheel "
                  "for its JetPack)",
    Backend.ORT_TENSORRT: "pip uninstall -y onnxruntime && pip install 'scanside[gpu]' "
                          "(onnxruntime-gpu with TensorRT 10 libraries on the library path; on a "
                          "Jetson, JetPack's TensorRT)",
    Backend.TENSORRT: "pip install 'scanside[tensorrt]' (tensorrt and cuda-python; on a Jetson, "
                      "JetPack's python3-libnvinfer and pip install cuda-python)",
}


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: tuple[int, int]
    memory_bytes: int

    @property
    def sm(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"


def cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime`` from 12.6, ``cuda.cudart``
    before), or raise ImportError."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        return importlib.import_module("cuda.cudart")


def check(result: Any, what: str) -> Any:
    """cuda-python returns (error, value...) tuples: raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailable(f"CUDA: {what} failed ({err}); check the NVIDIA driver "
                                 "(nvidia-smi) and that the process may use the GPU")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def first_gpu() -> Gpu:
    """Device 0 through cuda-python; BackendUnavailable if there is none."""
    try:
        rt = cudart()
    except ImportError:
        raise BackendUnavailable("CUDA: cuda-python is not installed (pip install cuda-python)") from None
    count = check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if not count:
        raise BackendUnavailable("CUDA: no GPU is visible (CUDA_VISIBLE_DEVICES, driver)")
    props = check(rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return Gpu(name.strip("\x00 "), (int(props.major), int(props.minor)), int(props.totalGlobalMem))


def missing(backend: Backend, ort_providers: Optional[Callable[[], list[str]]] = None,
            gpu: Optional[Callable[[], Gpu]] = None) -> Optional[str]:
    """Why ``backend`` cannot run here, or None if it can. The two callables are for tests."""
    if backend is Backend.CPU:
        return None
    if backend in ORT_PROVIDERS:
        if ort_providers is None:
            import onnxruntime as ort

            ort_providers = ort.get_available_providers
        offered = ort_providers()
        if ORT_PROVIDERS[backend] not in offered:
            return (f"ONNX Runtime here offers {offered}, not {ORT_PROVIDERS[backend]}; "
                    f"install: {INSTALL[backend]}")
        return None  # the provider's own libraries are checked when the session is created
    try:
        importlib.import_module("tensorrt")
    except ImportError:
        return f"the tensorrt package is not installed; install: {INSTALL[backend]}"
    try:
        (gpu or first_gpu)()
    except BackendUnavailable as exc:
        return f"{exc}; install: {INSTALL[backend]}"
    return None


def choose(requested: "str | Backend", unfit: "Optional[dict[Backend, str]]" = None,
           **probes: Any) -> tuple[Backend, list[str]]:
    """(the backend to use, notes): an explicit backend that is missing raises with the
    reason and the install command; ``auto`` takes the first present in AUTO_ORDER and its
    notes say why each faster one was passed over. ``unfit``: backends the engine itself
    cannot run on, with why (refused like a missing one)."""
    unfit = unfit or {}
    backend = Backend.parse(requested)
    if backend is not Backend.AUTO:
        reason = unfit.get(backend) or missing(backend, **probes)
        if reason:
            raise BackendUnavailable(f"backend {backend.value}: {reason}; or use --backend cpu")
        return backend, []
    notes = []
    for candidate in AUTO_ORDER:
        reason = unfit.get(candidate) or missing(candidate, **probes)
        if reason is None:
            notes.append(f"backend auto: chose {candidate.value}")
            return candidate, notes
        notes.append(f"backend auto: not {candidate.value}: {reason}")
    raise AssertionError("the CPU backend is always present")


def unfit_backends(manifest: Manifest, engine_dir: Path) -> dict[Backend, str]:
    """Backends this engine cannot run on, with why and the fix."""
    if manifest.attention is Attention.FUSED:
        return {Backend.TENSORRT: (
            f"{engine_dir} was exported with --attention fused (ONNX Runtime's "
            "MultiHeadAttention), which TensorRT's parser does not take; re-export it with "
            "--attention plain (TensorRT fuses attention itself)")}
    return {}
