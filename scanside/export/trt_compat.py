"""ONNX graphs for older TensorRT parsers (``scanside export --trt-compat 8.5``).

JetPack 5.1 ships TensorRT 8.5, whose ONNX parser has no LayerNormalization (opset 17's fused
op; TensorRT's parser takes it from 8.6). The CLIP text encoder and the UNet's transformer
blocks use it, so for 8.5 each LayerNormalization is rewritten as the ops it stands for:

    mean = ReduceMean(x, axes)            d = x - mean
    var  = ReduceMean(d * d, axes)        y = d / Sqrt(var + eps) * scale + bias

with the reduction over the op's axes (``axis`` to the last), in float32 like the fused op.
The export then checks the rewritten graph against torch exactly as it checks every graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from scanside.errors import InputError

COMPAT = ("8.5",)


def check_compat(value: "str | None") -> None:
    if value is not None and value not in COMPAT:
        raise InputError(f"trt_compat: {value!r} is not supported; choose one of {COMPAT} "
                         "(TensorRT 8.6 and newer parse the graphs as exported)")


def decompose_layernorm(model: onnx.ModelProto) -> int:
    """Rewrite every LayerNormalization of ``model`` (in place); returns how many."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    graph = model.graph
    ranks = tensor_ranks(model)
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        count += 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, eps = int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5))
        rank = ranks.get(node.input[0])
        if rank is None:  # the op normalises over axis..last: the rank decides the axes
            raise InputError(f"{node.name}: LayerNormalization on a tensor of unknown rank; "
                             "cannot rewrite it for TensorRT 8.5")
        axes = list(range(axis if axis >= 0 else rank + axis, rank))
        p = f"{node.name or 'layernorm'}_{count}"
        x, scale = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        new = []
        graph.initializer.append(numpy_helper.from_array(np.array(eps, np.float32), f"{p}_eps"))
        if opset >= 18:  # ReduceMean's axes became an input
            graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), f"{p}_axes"))
            reduce = lambda i, o: helper.make_node("ReduceMean", [i, f"{p}_axes"], [o],  # noqa: E731
                                                   keepdims=1)
        else:
            reduce = lambda i, o: helper.make_node("ReduceMean", [i], [o], axes=axes,  # noqa: E731
                                                   keepdims=1)
        new.append(reduce(x, f"{p}_mean"))
        new.append(helper.make_node("Sub", [x, f"{p}_mean"], [f"{p}_d"]))
        new.append(helper.make_node("Mul", [f"{p}_d", f"{p}_d"], [f"{p}_d2"]))
        new.append(reduce(f"{p}_d2", f"{p}_var"))
        new.append(helper.make_node("Add", [f"{p}_var", f"{p}_eps"], [f"{p}_vareps"]))
        new.append(helper.make_node("Sqrt", [f"{p}_vareps"], [f"{p}_std"]))
        new.append(helper.make_node("Div", [f"{p}_d", f"{p}_std"], [f"{p}_norm"]))
        out = node.output[0]
        if bias is None:
            new.append(helper.make_node("Mul", [f"{p}_norm", scale], [out]))
        else:
            new.append(helper.make_node("Mul", [f"{p}_norm", scale], [f"{p}_scaled"]))
            new.append(helper.make_node("Add", [f"{p}_scaled", bias], [out]))
        nodes.extend(new)
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def tensor_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor ONNX's shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a graph shape inference cannot follow: ranks unknown
        inferred = model
    ranks = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)
    return ranks
