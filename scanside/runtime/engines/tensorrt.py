"""Native TensorRT: plans built from the exported ONNX on the device, cached, and run with
``execute_async_v3`` on one CUDA stream (TensorRT 10's Python API; 8.5/8.6 on JetPack 5 where
noted).

Profiles come from the IOSpec (``profile_shapes``): a static engine's one shape, or a dynamic
engine's (min, opt, max) per named dimension — the tile sizes the pipeline runs included,
since they lie inside the ranges. A plan is specific to the GPU, its compute capability and
the TensorRT version, so plans live in ENGINE_DIR/tensorrt/<key>/ (or the user's cache when the
engine directory is read-only: ``cache_root``), keyed by ``PlanKey``: the ONNX hash,
the GPU's name and SM, the TensorRT version and the build options; a key that does not match
(a new ONNX, another GPU, an upgraded TensorRT) builds a new plan and says why, never loads a
stale one. One timing cache per GPU and TensorRT version is reused across builds.

Precision follows the ONNX graph (the export stage chose it and measured its accuracy): on
TensorRT 10 the network is *strongly typed* — fp16 graphs run fp16 where they are typed so,
int8 QDQ graphs are explicitly quantised, and precision flags are not set, as NVIDIA's
explicit-quantisation guide asks. TensorRT 8.x has no strong typing: the FP16 / INT8 builder
flags are set from the manifest's precision instead.

Runtime: device buffers are allocated once per engine at the profile's largest shapes and
reused; inputs are copied in, outputs out, on one stream. With ``cuda_graph`` the call is
captured once per input shape set and replayed (TensorRT's guide: run once before capture
so shape-dependent work is done). With ``low_memory`` every engine's context is created
without its own activation memory (USER_MANAGED) and all share one scratch buffer of the
largest engine's size — one engine's activations at a time, for 8 GB Jetsons.

**Not yet run on hardware**: no machine this project is built on has TensorRT and a GPU.
The GPU-free parts (profiles, keys, cache decisions, trtexec lines) are tested; the rest is
written against the TensorRT Python API reference and samples and has ``gpu``-marked tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from scanside.errors import BackendUnavailable, EngineError
from scanside.runtime.iospec import DTYPES, IOSpec

from .devices import Gpu, check, cudart, first_gpu

log = logging.getLogger(__name__)
PLAN_DIR = "tensorrt"
WORKSPACE_BYTES = 2 << 30  # builder scratch; tactics needing more are skipped


# -- GPU-free: profiles, keys, commands ---------------------------------------------------
def profile_shapes(spec: IOSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape of every input: static dims as bound, free ones from the ranges."""
    shapes = {}
    for tensor in spec.inputs:
        picks = []
        for which in range(3):
            dims = []
            for d in tensor.shape:
                if isinstance(d, int):
                    dims.append(d)
                elif d in spec.static:
                    dims.append(int(spec.static[d]))
                elif d in spec.ranges:
                    dims.append(int(spec.ranges[d][which]))
                else:
                    raise EngineError(f"{spec.component}: input {tensor.name} dimension {d!r} has "
                                      "neither a size nor a range in the manifest; re-export")
            picks.append(tuple(dims))
        shapes[tensor.name] = (picks[0], picks[1], picks[2])
    return shapes


def is_static(spec: IOSpec) -> bool:
    """True if every input has one shape (no free dimension, batch included)."""
    return all(low == high for low, _, high in profile_shapes(spec).values())


def largest_shapes(spec: IOSpec) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, largest shape, dtype) of every input and output: what a buffer reused for every
    call must hold. Outputs take the inputs' largest sizes, and the ranges' maxima for the
    dimensions no input has (a VAE's pixel size from its latent size)."""
    bindings = {d: r[2] for d, r in spec.ranges.items()}
    out = []
    for name, (_, _, high) in profile_shapes(spec).items():
        tensor = next(t for t in spec.inputs if t.name == name)
        for d, size in zip(tensor.shape, high):
            if isinstance(d, str):
                bindings[d] = int(size)
        out.append((name, high, tensor.dtype))
    for tensor in spec.outputs:
        out.append((tensor.name, spec.concrete(tensor.shape, bindings), tensor.dtype))
    return out


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def shapes_option(spec: IOSpec, which: int) -> str:
    """trtexec's --minShapes/--optShapes/--maxShapes value (and ORT's trt_profile_*_shapes):
    ``name:1x8x64x64,name2:...`` (which: 0 min, 1 opt, 2 max)."""
    return ",".join(f"{name}:{shape_text(s[which])}" for name, s in profile_shapes(spec).items())


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


@dataclass(frozen=True)
class PlanKey:
    """What a plan depends on; its folder name and key.json carry it."""

    onnx_sha256: str
    gpu: str
    compute_capability: str  # "8.7"
    tensorrt: str
    precision: str
    strongly_typed: bool
    profile: str  # the min/opt/max shapes, as trtexec writes them

    def folder(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"{slug(self.gpu)}-sm{self.compute_capability.replace('.', '')}-trt{self.tensorrt}-{digest[:12]}"

    def why_not(self, other: Mapping[str, Any]) -> str:
        """What differs between this key and a stored one ('' if nothing)."""
        mine = asdict(self)
        changed = [k for k in mine if other.get(k) != mine[k]]
        return ", ".join(f"{k} {other.get(k)!r} -> {mine[k]!r}" for k in changed)


def plan_key(spec: IOSpec, onnx_sha256: str, gpu: Gpu, trt_version: str, precision: str) -> PlanKey:
    profile = " ".join(shapes_option(spec, i) for i in range(3))
    return PlanKey(onnx_sha256, gpu.name, f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}",
                   trt_version, precision, strongly_typed(trt_version), profile)


def strongly_typed(trt_version: str) -> bool:
    """TensorRT 10 builds strongly typed networks (the graph's types decide precision)."""
    return int(trt_version.split(".")[0]) >= 10


def cache_root(engine_dir: Path, source_hash: str) -> Path:
    """Where plans and caches of ENGINE_DIR go: ENGINE_DIR/tensorrt when it can be written,
    else the user's cache (the built-in model's engine lives read-only in site-packages)."""
    if os.access(engine_dir, os.W_OK):
        return engine_dir / PLAN_DIR
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "scanside" / source_hash[:16] / PLAN_DIR


def plan_path(root: Path, component: str, key: PlanKey) -> Path:
    return root / key.folder() / f"{component}.plan"


def cached_plan(root: Path, component: str, key: PlanKey) -> Optional[Path]:
    """The plan for ``key`` if one was built, else None. A plan of the same component for the
    same GPU and TensorRT whose key differs is reported (it is never loaded)."""
    path = plan_path(root, component, key)
    if path.is_file() and (path.parent / "key.json").is_file():
        stored = json.loads((path.parent / "key.json").read_text())
        if not key.why_not(stored):
            return path
    for other in sorted(root.glob(f"*/{component}.plan")):
        try:
            stored = json.loads((other.parent / "key.json").read_text())
        except (OSError, ValueError):
            continue
        if stored.get("gpu") == key.gpu and stored.get("tensorrt") == key.tensorrt:
            log.warning("%s: the TensorRT plan in %s was built for other inputs (%s); building "
                        "a new one", component, other.parent.name, key.why_not(stored))
    return None


def cached_plans(root: Path) -> list[str]:
    """One line per cached plan folder: GPU, SM, TensorRT version, precision, components."""
    lines = []
    for key_file in sorted(root.glob("*/key.json")):
        try:
            key = json.loads(key_file.read_text())
        except (OSError, ValueError):
            continue
        parts = sorted(p.stem for p in key_file.parent.glob("*.plan"))
        lines.append(f"{key.get('gpu')} (sm {key.get('compute_capability')}), TensorRT "
                     f"{key.get('tensorrt')}, {key.get('precision')}: {', '.join(parts)} "
                     f"[{key_file.parent.name}]")
    return lines


def timing_cache_path(root: Path, gpu: Gpu, trt_version: str) -> Path:
    return root / f"timing-{slug(gpu.name)}-{gpu.sm}-trt{trt_version}.cache"


def trtexec_command(onnx: Path, plan: Path, spec: IOSpec, precision: str, trt_major: int,
                    timing_cache: Path, workspace_mib: int = WORKSPACE_BYTES >> 20) -> list[str]:
    """The trtexec command line that builds the same plan as ``build_plan`` (for sites that
    build with JetPack's own tools)."""
    cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={plan}",
           f"--timingCacheFile={timing_cache}", f"--memPoolSize=workspace:{workspace_mib}M"]
    if not is_static(spec):
        cmd += [f"--minShapes={shapes_option(spec, 0)}", f"--optShapes={shapes_option(spec, 1)}",
                f"--maxShapes={shapes_option(spec, 2)}"]
    else:
        cmd += [f"--shapes={shapes_option(spec, 1)}"]
    if trt_major >= 10:
        cmd.append("--stronglyTyped")
    else:
        cmd += {"fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}.get(precision, [])
    return cmd


# -- on the device --------------------------------------------------------------------------
def trt_module() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("backend tensorrt: the tensorrt package is not installed; "
                                 "pip install 'scanside[tensorrt]' (on a Jetson: JetPack's "
                                 "python3-libnvinfer)") from None
    return trt


def build_plan(onnx: Path, spec: IOSpec, precision: str, out: Path, timing_cache: Path,
               workspace: int = WORKSPACE_BYTES) -> None:
    """Parse ``onnx`` and build a serialized plan into ``out`` (atomically), reusing and
    updating ``timing_cache``."""
    trt = trt_module()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed(trt.__version__):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT 8.x
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external data next to the ONNX file.
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx}: TensorRT's ONNX parser refused it ({errors}); for TensorRT "
                          "8.5 re-export with --trt-compat 8.5")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if not strongly_typed(trt.__version__):
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # honours the graph's Q/DQ (explicit)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(spec).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx}: TensorRT could not build a plan (see its log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, out)
    timing_tmp = timing_cache.with_suffix(".partial")
    timing_tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    os.replace(timing_tmp, timing_cache)


def ensure_plan(root: Path, component: str, onnx: Path, onnx_sha256: str, spec: IOSpec,
                precision: str) -> Path:
    """The cached plan under ``root`` (cache_root) for this GPU and TensorRT, built first if
    there is none."""
    trt = trt_module()
    gpu = first_gpu()
    key = plan_key(spec, onnx_sha256, gpu, trt.__version__, precision)
    found = cached_plan(root, component, key)
    if found is not None:
        return found
    path = plan_path(root, component, key)
    log.warning("%s: building a TensorRT plan for %s (%s, TensorRT %s); minutes, once",
                component, gpu.name, gpu.sm, trt.__version__)
    build_plan(onnx, spec, precision, path, timing_cache_path(root, gpu, trt.__version__))
    (path.parent / "key.json").write_text(json.dumps(asdict(key), indent=1) + "\n")
    return path


class SharedScratch:
    """One activation buffer for every engine of a pipeline (``low_memory``)."""

    def __init__(self) -> None:
        self.ptr, self.size = 0, 0

    def reserve(self, size: int) -> int:
        rt = cudart()
        if size > self.size:
            if self.ptr:
                check(rt.cudaFree(self.ptr), "cudaFree")
            self.ptr, self.size = int(check(rt.cudaMalloc(size), "cudaMalloc")), size
        return self.ptr


class TrtEngine:
    """One deserialized plan with its context, stream and device buffers."""

    def __init__(self, plan: Path, spec: IOSpec, cuda_graph: bool = False,
                 scratch: Optional[SharedScratch] = None) -> None:
        trt = trt_module()
        self.rt = cudart()
        self.spec = spec
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise EngineError(f"{plan}: TensorRT could not load this plan; delete "
                              f"{plan.parent} to rebuild it")
        self.scratch = scratch
        if scratch is not None:
            strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
            self.context = self.engine.create_execution_context(strategy)
        else:
            self.context = self.engine.create_execution_context()
        self.stream = check(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self.allocate()
        # A graph records buffer addresses: the shared scratch moves, so no graphs with it.
        self.cuda_graph = cuda_graph and scratch is None
        self.graphs: dict[tuple, Any] = {}

    def allocate(self) -> None:
        """Device buffers at the profile's largest shapes, once."""
        for name, dims, dtype in largest_shapes(self.spec):
            nbytes = int(np.prod(dims)) * np.dtype(DTYPES[dtype]).itemsize
            ptr = int(check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            self.buffers[name] = (ptr, nbytes)
            self.context.set_tensor_address(name, ptr)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.spec.check_feeds(feeds)
        rt = self.rt
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if self.scratch is not None:  # another engine may have used the shared memory since
            self.attach_scratch()
        host = {}
        for t in self.spec.inputs:
            array = np.ascontiguousarray(feeds[t.name])
            host[t.name] = array
            ptr, capacity = self.buffers[t.name]
            if array.nbytes > capacity:
                raise EngineError(f"{self.spec.component}: input {t.name} {array.shape} is larger "
                                  "than the plan's profile; re-export with larger ranges")
            self.context.set_input_shape(t.name, array.shape)
            check(rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d, self.stream),
                  "cudaMemcpyAsync")
        self.execute(tuple((k, v.shape) for k, v in host.items()))
        outputs = {}
        for t in self.spec.outputs:
            shape = tuple(self.context.get_tensor_shape(t.name))
            out = np.empty(shape, DTYPES[t.dtype])
            check(rt.cudaMemcpyAsync(out.ctypes.data, self.buffers[t.name][0], out.nbytes, d2h,
                                     self.stream), "cudaMemcpyAsync")
            outputs[t.name] = out
        check(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return outputs

    def attach_scratch(self) -> None:
        """Point this context at the shared activation buffer, grown to its need."""
        engine, context = self.engine, self.context
        size = (engine.device_memory_size_v2 if hasattr(engine, "device_memory_size_v2")
                else engine.device_memory_size)
        ptr = self.scratch.reserve(size)
        if hasattr(context, "set_device_memory"):  # TensorRT 10.1+
            context.set_device_memory(ptr, size)
        else:
            context.device_memory = ptr

    def execute(self, shapes: tuple) -> None:
        rt = self.rt
        if not self.cuda_graph:
            if not self.context.execute_async_v3(self.stream):
                raise EngineError(f"{self.spec.component}: TensorRT execution failed")
            return
        graph = self.graphs.get(shapes)
        if graph is None:
            # Once outside the capture (shape-dependent setup), then capture and instantiate.
            self.context.execute_async_v3(self.stream)
            mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            check(rt.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
            self.context.execute_async_v3(self.stream)
            captured = check(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
            graph = check(rt.cudaGraphInstantiate(captured, 0), "cudaGraphInstantiate")
            self.graphs[shapes] = graph
        check(rt.cudaGraphLaunch(graph, self.stream), "cudaGraphLaunch")

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.rt.cudaFree(ptr)
        self.buffers.clear()
