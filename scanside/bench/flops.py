"""FLOPs of an exported component at the benchmarked shape, counted from the ONNX graph.

FLOPs = 2 x multiply-accumulates of Conv, ConvTranspose, MatMul, Gemm and ONNX Runtime's fused
MultiHeadAttention (its two products, as the unfused MatMuls would count them; everything
else — norms, softmax, activations — is memory-bound and small in FLOPs). Shapes come from ONNX
Runtime's symbolic shape inference (it propagates the Shape/Reshape arithmetic of attention,
which onnx's own inference leaves unknown) on the graph with its dims bound to the run's sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm", "MultiHeadAttention")


@dataclass(frozen=True)
class FlopCount:
    flops: int
    unknown_nodes: int  # counted ops whose shapes inference could not settle (then partial)


def bind_dims(model, sizes: Mapping[str, int]) -> None:
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in sizes:
                dim.dim_value = int(sizes[dim.dim_param])


def weights_as_inputs(model) -> None:
    """Large initializers become typed graph inputs: inference needs their shapes, not bytes
    (which may live in an external file it cannot find from a loaded proto)."""
    from onnx import TensorProto, helper

    keep = []
    for init in model.graph.initializer:
        if init.data_location == TensorProto.EXTERNAL or init.ByteSize() > 4096:
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            keep.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def shapes(model) -> dict[str, tuple[int, ...]]:
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except ImportError:  # sympy missing: onnx's inference, which may leave attention unknown
        import onnx

        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    table = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            table[value.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        table[init.name] = tuple(init.dims)
    return table


def node_macs(node, table: Mapping[str, tuple[int, ...]]) -> int | None:
    """Multiply-accumulates of one node; None where its shapes are unknown."""
    if node.op_type in ("Conv", "ConvTranspose"):
        out, weight, inp = table.get(node.output[0]), table.get(node.input[1]), table.get(node.input[0])
        if out is None or weight is None or inp is None:
            return None
        # Conv: each output element is a dot product over Cin/groups x kernel taps.
        # ConvTranspose weights are (Cin, Cout/groups, k...): each input element scatters.
        if node.op_type == "Conv":
            return int(np.prod(out)) * int(np.prod(weight[1:]))
        return int(np.prod(inp)) * int(np.prod(weight[1:]))
    if node.op_type == "MultiHeadAttention":
        # query (B, S, D), key (B, L, D), value (B, L, Dv): q k^T is S x L x D per batch
        # (D split over the heads), scores x v is S x L x Dv.
        q, k, v = (table.get(name) for name in node.input[:3])
        if q is None or k is None or v is None or len(k) != 3:
            return None
        return q[0] * q[1] * k[1] * (q[2] + v[2])
    a, out = table.get(node.input[0]), table.get(node.output[0])
    if a is None or out is None:
        return None
    transposed = node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
    return int(np.prod(out)) * int(a[-2] if transposed else a[-1])


def count_flops(onnx_path: Path, sizes: Mapping[str, int]) -> FlopCount:
    """2 x MACs of the graph at ``sizes`` (e.g. {"UB": 1, "h": 32, "w": 32})."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    bind_dims(model, sizes)
    weights_as_inputs(model)
    table = shapes(model)
    macs = [node_macs(n, table) for n in model.graph.node if n.op_type in COUNTED]
    return FlopCount(2 * sum(m for m in macs if m), sum(m is None for m in macs))
