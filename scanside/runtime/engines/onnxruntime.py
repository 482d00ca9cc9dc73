"""ONNX Runtime adapter: one InferenceSession per component, on the CPU, CUDA or TensorRT
execution provider.

On a GPU provider the session must really run there: ORT falls back to the CPU with only a
log line when the provider's libraries (CUDA, cuDNN, TensorRT) do not load, so the session's
providers are checked and a fallback is an error that says what is missing. Outputs are bound
on the device with IO binding (no per-call output allocation on the host side beyond the
copy back); static engines with ``cuda_graph`` keep their inputs and outputs in fixed device
buffers (OrtValues updated in place), which ORT's CUDA graphs require.

**The CUDA and TensorRT providers are not yet run on hardware** here (no onnxruntime-gpu on any
machine this project is built on); their option dictionaries are tested, and the calls follow
ONNX Runtime's execution-provider documentation.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from scanside.errors import BackendUnavailable
from scanside.runtime.artifacts import Component, onnx_files
from scanside.runtime.host import saturates
from scanside.runtime.iospec import DTYPES, IOSpec
from scanside.runtime.parallel import physical_cores

from .base import Backend
from .devices import INSTALL, ORT_PROVIDERS
from .tensorrt import is_static, largest_shapes

log = logging.getLogger(__name__)
WORKSPACE_BYTES = 2 << 30


def cuda_options(cuda_graph: bool = False, device_id: int = 0) -> dict[str, str]:
    """CUDA execution provider options (ORT's documented names; values as strings)."""
    return {"device_id": str(device_id),
            # Autotuned convolutions: slower first call, faster every later one.
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "arena_extend_strategy": "kSameAsRequested",  # no power-of-two over-allocation
            "do_copy_in_default_stream": "1",
            "enable_cuda_graph": "1" if cuda_graph else "0"}


def tensorrt_options(spec: IOSpec, cache_dir: Path, precision: str, cuda_graph: bool = False,
                     device_id: int = 0) -> dict[str, str]:
    """TensorRT execution provider options: engine and timing caches under ``cache_dir``,
    explicit profiles from the IOSpec for dynamic engines, precision from the graph's."""
    from .tensorrt import shapes_option

    options = {"device_id": str(device_id),
               "trt_max_workspace_size": str(WORKSPACE_BYTES),
               "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir),
               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache_dir),
               "trt_fp16_enable": str(precision in ("fp16", "int8")),
               "trt_int8_enable": str(precision == "int8"),  # the graph's Q/DQ, no calibration
               "trt_cuda_graph_enable": str(cuda_graph)}
    if not is_static(spec):
        for which, name in enumerate(("min", "opt", "max")):
            options[f"trt_profile_{name}_shapes"] = shapes_option(spec, which)
    return options


_shared_arena = False


def register_shared_arena() -> None:
    """One CPU arena for every session of the process, registered once on ORT's environment.

    Each session's own arena keeps the high-water mark of its component, so the text encoder's,
    UNet's and both VAE arenas add up; a shared one holds only the largest. Measured on SD 1.5
    at 256 px: peak RSS 1.32x the weights with per-session arenas, 1.22x shared, 1.16x with no
    arena at all — but no arena costs ~10% latency (fresh pages on every large allocation).
    """
    global _shared_arena
    if not _shared_arena:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                 ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _shared_arena = True


# ORT's memory pattern plans one block for all of a graph's activations from its first run and
# allocates it on the second, while the first run's buffers stay in the shared arena. For SD
# 1.5's VAE decoder at 512 px that is 0.88 GiB more from its second call on (peak RSS 1.61x the
# weights with the pattern, 1.39x without), and no faster without it (two enhance runs: 28.2 /
# 28.8 s with, 28.3 / 26.6 s without). A small model's many short calls gain from it: the
# built-in model's 100-slice series ran 2.34 / 2.28 slices/s with, 2.23 / 2.20 without. So the
# large components (SD's VAE is 131 / 189 MB, its UNet 3.4 GB) go without it.
MEMORY_PATTERN_MAX_BYTES = 64 << 20


def memory_pattern(weights: int) -> bool:
    """Whether a CPU session of a component with ``weights`` bytes plans a memory pattern."""
    return weights <= MEMORY_PATTERN_MAX_BYTES


def exact_int8(component: Component, host: str | None = None) -> bool:
    """Whether a CPU session of ``component`` must take ONNX Runtime's exact int8 path.

    An int8 engine with full-range weights (exported for a VNNI or AMX host, or before the
    weight range was recorded) on an x86 CPU without VNNI would saturate in the fast u8 x s8
    kernels: the built-in model's UNet came out at 7.4 dB SQNR against fp32 instead of 10.4
    (Zen 3, AVX2). ``session.x64quantprecision`` makes ONNX Runtime convert those products to
    u8 x u8, which cannot overflow, and slower (0.96 s a step there against 0.64 s; fp32 0.88 s).
    A 7-bit ("s7") export runs the fast kernels exactly."""
    return component.weight_range == "s8" and saturates(host)


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One thread per physical core this process may use (see physical_cores); a caller
    # sharing the scanner PC with other work can cap it.
    options.intra_op_num_threads = threads or physical_cores()
    options.log_severity_level = 3
    return options


@functools.lru_cache(maxsize=None)
def preload_gpu_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages (torch's, or onnxruntime-gpu's own
    [cuda,cudnn] extras) where they are not on the library path: onnxruntime-gpu >= 1.21's
    preload_dlls. Without it the CUDA provider does not load on such a machine and the
    session is refused below (it would otherwise run on the CPU)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # noqa: BLE001 - the libraries may be on the path anyway
        log.info("onnxruntime.preload_dlls: %s: %s", type(exc).__name__, exc)


class OrtEngine:
    def __init__(self, path: Path, spec: IOSpec, backend: Backend, threads: int | None = None,
                 precision: str = "fp32", cache_dir: Path | None = None,
                 cuda_graph: bool = False, exact_int8: bool = False):
        provider = ORT_PROVIDERS[backend]
        available = ort.get_available_providers()
        if provider not in available:
            raise BackendUnavailable(
                f"backend {backend.value}: ONNX Runtime here offers {available}, not {provider}; "
                f"install: {INSTALL.get(backend, '')}; or use --backend cpu")
        self.spec = spec
        self.backend = backend
        if backend is not Backend.CPU:
            preload_gpu_libraries()
        options = session_options(threads)
        providers: list = [provider]
        # CUDA graphs need every input and output at a fixed address and shape.
        self.cuda_graph = cuda_graph and is_static(spec)
        if backend is Backend.CPU:
            register_shared_arena()
            options.add_session_config_entry("session.use_env_allocators", "1")
            weights = sum(f.stat().st_size for f in onnx_files(path))
            options.enable_mem_pattern = memory_pattern(weights)
            if exact_int8:  # see exact_int8()
                options.add_session_config_entry("session.x64quantprecision", "1")
                log.warning("%s: int8 with full-range weights on a CPU without VNNI, run on "
                            "ONNX Runtime's exact, slower kernels; for the fast ones, export it on "
                            "this CPU with --int8-weights auto (7-bit weights)", path)
        elif backend is Backend.CUDA:
            providers = [(provider, cuda_options(self.cuda_graph))]
        else:  # TensorRT provider, with CUDA for any node TensorRT does not take
            if cache_dir is None:
                raise ValueError("the TensorRT provider needs a cache directory")
            cache_dir.mkdir(parents=True, exist_ok=True)
            providers = [(provider, tensorrt_options(spec, cache_dir, precision, self.cuda_graph)),
                         ("CUDAExecutionProvider", cuda_options())]
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        used = self.session.get_providers()
        if not used or used[0] != provider:
            raise BackendUnavailable(
                f"backend {backend.value}: ONNX Runtime fell back to {used} for {path.name} "
                f"(the {provider} libraries did not load: CUDA, cuDNN or TensorRT missing or of "
                "another version; run with ORT_LOG_LEVEL=VERBOSE or check `ldd` on "
                "libonnxruntime_providers_*.so); or use --backend cpu")
        self.output_names = [t.name for t in spec.outputs]
        # A static engine's one output shape each (what CUDA graphs keep buffers of).
        self.output_shapes = {name: shape for name, shape, _ in largest_shapes(spec)}
        self.device_values: dict[str, ort.OrtValue] = {}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.spec.check_feeds(feeds)
        if self.backend is Backend.CPU:
            outputs = self.session.run(self.output_names, dict(feeds))
            return dict(zip(self.output_names, outputs))
        return self.run_on_device(feeds)

    def run_on_device(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self.session.io_binding()
        if self.cuda_graph:
            # Fixed device buffers, updated in place: what ORT's CUDA graph replay needs.
            for name, array in feeds.items():
                value = self.device_values.get(name)
                if value is None:
                    value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)
                    self.device_values[name] = value
                else:
                    value.update_inplace(np.ascontiguousarray(array))
                binding.bind_ortvalue_input(name, value)
            for t in self.spec.outputs:
                value = self.device_values.get(t.name)
                if value is None:
                    shape = self.output_shapes[t.name]
                    value = ort.OrtValue.ortvalue_from_shape_and_type(shape, DTYPES[t.dtype], "cuda", 0)
                    self.device_values[t.name] = value
                binding.bind_ortvalue_output(t.name, value)
        else:
            for name, array in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
            for name in self.output_names:
                binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))
