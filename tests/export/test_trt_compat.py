"""--trt-compat 8.5: LayerNormalization rewritten into the ops TensorRT 8.5's parser takes,
checked numerically against the fused op with ONNX Runtime on the CPU."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from scanside.errors import InputError
from scanside.export.trt_compat import check_compat, decompose_layernorm


def layernorm_model(shape, axis: int, bias: bool, opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    norm_shape = shape[axis:]
    inits = [numpy_helper.from_array(rng.standard_normal(norm_shape).astype(np.float32), "scale")]
    inputs = ["x", "scale"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(norm_shape).astype(np.float32), "bias"))
        inputs.append("bias")
    node = helper.make_node("LayerNormalization", inputs, ["y"], axis=axis, epsilon=1e-5, name="ln")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("axis,bias,opset", [(-1, True, 17), (1, False, 17), (-2, True, 18)])
def test_decomposed_layernorm_matches_the_fused_op(axis, bias, opset):
    shape = [2, 5, 16]
    model = layernorm_model(shape, axis, bias, opset)
    x = (np.random.default_rng(1).standard_normal(shape) * 3 + 1).astype(np.float32)
    fused = run(model, x)
    assert decompose_layernorm(model) == 1
    assert not [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    onnx.checker.check_model(model)
    np.testing.assert_allclose(run(model, x), fused, rtol=1e-5, atol=1e-5)


def test_a_layernorm_of_unknown_rank_is_refused_not_guessed():
    model = layernorm_model([2, 5, 16], 1, False, 17)
    del model.graph.input[0].type.tensor_type.shape.dim[:]  # rank no longer known
    model.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(InputError, match="unknown rank"):
        decompose_layernorm(model)


def test_only_the_supported_compat_versions_are_taken():
    check_compat(None)
    check_compat("8.5")
    with pytest.raises(InputError, match="trt_compat: '8.2' is not supported"):
        check_compat("8.2")


@pytest.mark.slow
def test_export_for_tensorrt_8_5_has_no_layernorm_and_passes_parity(tiny_model, tiny_engine,
                                                                    tmp_path):
    from scanside.export import export_model

    plain = onnx.load(tiny_engine / "text_encoder.onnx").graph.node
    assert "LayerNormalization" in {n.op_type for n in plain}  # what 8.5 cannot parse

    manifest = export_model(tiny_model, tmp_path / "engine", trt_compat="8.5")
    ops = {c: {n.op_type for n in onnx.load(tmp_path / "engine" / manifest.components[c].file).graph.node}
           for c in manifest.components}
    assert "LayerNormalization" not in set().union(*ops.values())
    for component in manifest.components.values():  # the same torch parity bar as any export
        assert component.parity_max_abs_diff <= component.parity_tolerance
