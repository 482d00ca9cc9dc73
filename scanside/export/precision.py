"""Reduced-precision engines from the fp32 ONNX graphs: fp16 conversion and int8 QDQ.

fp16 uses ONNX Runtime's float16 converter (onnxconverter-common's plain
``convert_float_to_float16`` leaves a Cast whose type no longer matches on diffusers' UNet,
and ORT refuses the graph). The engine boundary stays fp32 (``keep_io_types``), and the ops
that overflow or lose accuracy in half precision stay fp32: normalisation statistics
(Instance/LayerNormalization, ReduceMean, Pow, Sqrt), the attention softmax, Exp/Erf, and the
sinusoidal timestep embedding (t * freq reaches 1000 rad, where fp16's step is 0.5 rad).

int8 is static post-training quantisation in QDQ form — what TensorRT's explicit int8 and ONNX
Runtime's CPU int8 kernels both consume — with per-channel symmetric int8 weights and
activations calibrated on the real workload (see calibration.py). Two measured choices
(SD 1.5 UNet, 256 px, 2-core AVX-512 VNNI CPU, one step: fp32 0.495 s):
  - activations uint8 (asymmetric) for ONNX Runtime on x86, whose VNNI kernels multiply u8 by
    s8: 0.275 s, against 0.379 s with symmetric int8 activations (TensorRT's requirement, kept
    as the ``s8`` option);
  - the attention's activation-by-activation MatMuls (Q.K^T and P.V) stay in float: quantising
    both operands at every call costs more than the int8 product saves (0.232 s without them).

Weights are int8 in one of two ranges, chosen for the host the engine is for (``Int8Weights``):
x86 CPUs without VNNI (AVX2, AVX-512F) multiply u8 by s8 with (v)pmaddubsw, which adds two
products into a saturating 16-bit lane: 2 x 255 x 127 overflows it, 2 x 255 x 64 does not. On
such a host (2-core AMD EPYC Zen 3, AVX2) the built-in model's int8 UNet with full-range weights
came out of ONNX Runtime's integer kernels at 7.4 dB SQNR against fp32 where the same graph run
as float gives 10.4 dB (the saturation's share); its final image lost 1.1 dB. Weights in
[-64, 64] (ONNX Runtime's ``reduce_range``) cannot overflow there and keep the fast kernels.
"""

from __future__ import annotations

import enum
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import onnx

from scanside.runtime.host import saturates

log = logging.getLogger(__name__)

FP16_BLOCKED_OPS = ["InstanceNormalization", "LayerNormalization", "GroupNormalization",
                    "ReduceMean", "Pow", "Sqrt", "Softmax", "Exp", "Erf", "Sin", "Cos"]
# Ops quantised to int8. Conv and MatMul carry nearly all FLOPs; Gemm is the time/text MLPs.
INT8_OPS = ["Conv", "MatMul", "Gemm"]


def save(model: onnx.ModelProto, path: Path, external_bytes: int) -> None:
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    external = weight_bytes > external_bytes
    onnx.save_model(model, str(path), save_as_external_data=external,
                    all_tensors_to_one_file=True, location=path.name + ".data", size_threshold=1024)


def upstream(model: onnx.ModelProto, seeds: Iterable[str], through: Sequence[str]) -> list[str]:
    """Names of the nodes feeding ``seeds`` through ops in ``through`` (and the seeds)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    by_name = {node.name: node for node in model.graph.node}
    found, stack = set(), list(seeds)
    while stack:
        node = by_name[stack.pop()]
        if node.name in found:
            continue
        found.add(node.name)
        for name in node.input:
            parent = producer.get(name)
            if parent is not None and parent.op_type in through:
                stack.append(parent.name)
    return sorted(found)


def to_fp16(src: Path, dst: Path, external_bytes: int) -> None:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    trig = [n.name for n in model.graph.node if n.op_type in ("Sin", "Cos")]
    keep = upstream(model, trig, through=("Mul", "Unsqueeze", "Cast", "Expand", "Slice", "Div"))
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_BLOCKED_OPS,
        node_block_list=keep)
    save(converted, dst, external_bytes)


class FeedReader:
    """onnxruntime.quantization's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]):
        self.feeds = iter(list(feeds))

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        return dict(next(self.feeds, None) or {}) or None


class Int8Activations(str, enum.Enum):
    U8 = "u8"  # asymmetric uint8: ONNX Runtime's fast x86 path (VNNI is u8 x s8)
    S8 = "s8"  # symmetric int8: what TensorRT's explicit int8 requires


class Int8Weights(str, enum.Enum):
    AUTO = "auto"  # s7 when exporting on a host whose u8 x s8 kernels saturate, else s8
    S8 = "s8"  # [-127, 127]: VNNI, AMX, ARM dot product, TensorRT
    S7 = "s7"  # [-64, 64]: x86 without VNNI (see the module's docstring)


@dataclass(frozen=True)
class Int8Layout:
    """How an int8 engine's tensors are laid out: what decides which kernels it reaches."""

    activations: Int8Activations = Int8Activations.U8
    weights: Int8Weights = Int8Weights.S8

    @classmethod
    def for_host(cls, activations: "Int8Activations | str", weights: "Int8Weights | str",
                 host: str) -> "Int8Layout":
        """``weights="auto"`` resolved for ``host``: s7 where u8 x s8 saturates. TensorRT's
        symmetric activations (s8) keep full-range weights: no x86 integer kernel runs them."""
        activations, weights = Int8Activations(activations), Int8Weights(weights)
        if weights is Int8Weights.AUTO:
            weights = (Int8Weights.S7 if activations is Int8Activations.U8 and saturates(host)
                       else Int8Weights.S8)
        return cls(activations, weights)


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose operands are both activations (attention scores and mixing)."""
    weights = {init.name for init in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul"
            and not any(i in weights or i in constants for i in n.input)]


@dataclass(frozen=True)
class Int8Report:
    attention_in_float: int  # activation x activation MatMuls, kept in float for speed
    sensitive_in_float: list[dict]  # nodes kept in float for accuracy, with the measured SQNR
    quantised_nodes: int
    median_sqnr_db: float


def to_int8_static(src: Path, dst: Path, feeds: Sequence[Mapping[str, np.ndarray]],
                   layout: Int8Layout = Int8Layout(),
                   external: bool = False, measure_on: int = 1) -> Int8Report:
    """Static QDQ with per-channel int8 weights, then the layers whose quantisation measurably
    hurts most (see sensitivity.py) back in float and quantised again."""
    from . import sensitivity

    attention = activation_matmuls(onnx.load(str(src), load_external_data=False))
    with tempfile.TemporaryDirectory(prefix="scanside-calibration-") as tmp:
        cache = Path(tmp) / "ranges.json"
        calibrate(src, feeds, external, cache)
        quantize(src, dst, cache, layout, attention, external)
        found = sensitivity.measure(src, dst, feeds[:measure_on], INT8_OPS)
        chosen = sensitivity.choose(found, len(found))
        if chosen:  # the cached ranges make this second pass cheap
            quantize(src, dst, cache, layout, attention + [c.node for c in chosen], external)
    scores = [f.sqnr_db for f in found if np.isfinite(f.sqnr_db)]
    return Int8Report(len(attention),
                      [{"node": c.node, "sqnr_db": round(c.sqnr_db, 1)} for c in chosen],
                      len(found), float(np.median(scores)) if scores else float("nan"))


def quantize(src: Path, dst: Path, cache: Path, layout: Int8Layout,
             exclude: Sequence[str], external: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    symmetric = layout.activations is Int8Activations.S8
    remove_onnx(dst)  # onnx appends to an existing external-data file; start from nothing
    quantize_static(
        str(src), str(dst), None, quant_format=QuantFormat.QDQ,
        op_types_to_quantize=INT8_OPS, per_channel=True,
        reduce_range=layout.weights is Int8Weights.S7,  # weights only, in ONNX Runtime 1.32
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
        use_external_data_format=external, calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        calibration_cache_path=cache,
    )


def calibrate(src: Path, feeds: Sequence[Mapping[str, np.ndarray]], external: bool,
              cache: Path) -> None:
    """Activation ranges first, on their own, saved where quantize_static reads them.

    quantize_static would hold the model, its augmented copy and the calibration session at
    once (over 24 GiB for SD 1.5's UNet at 512 px); apart, each phase fits. MinMax
    calibration augments the graph with ReduceMin/ReduceMax per tensor, so a run keeps two
    scalars per tensor, not the activations. (ORT's CalibMaxIntermediateOutputs option would
    bound that further but, in ORT 1.32, drops the data it bounds.)
    """
    import gc

    from onnxruntime.quantization.calibrate import (
        CalibrationMethod, TensorsData, create_calibrator, save_tensors_data,
    )

    with tempfile.TemporaryDirectory(prefix="scanside-augmented-") as tmp:
        calibrator = create_calibrator(
            src, INT8_OPS, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax, use_external_data_format=external)
        calibrator.collect_data(FeedReader(feeds))
        ranges = calibrator.compute_data()
        del calibrator
        gc.collect()
    if not isinstance(ranges, TensorsData):
        raise TypeError(f"calibration returned {type(ranges).__name__}, not TensorsData")
    save_tensors_data(ranges, cache)


def remove_onnx(path: Path) -> None:
    for f in (path, path.with_name(path.name + ".data")):
        if f.exists():
            f.unlink()


def to_int8_dynamic(src: Path, dst: Path, external: bool = False,
                    weights: Int8Weights = Int8Weights.S8) -> None:
    """Dynamic int8: weights quantised offline, activations per call (no calibration)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    remove_onnx(dst)
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=INT8_OPS,
                     per_channel=True, weight_type=QuantType.QInt8,
                     reduce_range=weights is Int8Weights.S7,
                     use_external_data_format=external)
