"""ONNX Runtime's u8 x s8 int8 kernels on this CPU: where they saturate, scanside's host table
(scanside.runtime.host.saturates) must say so, and both ways round it must be exact. Run on
every host CI meets, the first test checks the table against what ONNX Runtime really does."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from scanside.runtime.artifacts import Component, Precision
from scanside.runtime.engines.onnxruntime import exact_int8
from scanside.runtime.host import host_class, saturates
from scanside.runtime.iospec import IOSpec

K, N, M = 64, 16, 8  # K even: (v)pmaddubsw adds products in pairs


def matmul_integer(weight: int) -> bytes:
    """u8 (M, K) x s8 (K, N) constant -> int32: the product int8 Conv/MatMul kernels make."""
    w = numpy_helper.from_array(np.full((K, N), weight, np.int8), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "W"], ["Y"])], "g",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [M, K])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [M, N])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def product(weight: int, exact_path: bool = False) -> tuple[np.ndarray, np.ndarray]:
    options = ort.SessionOptions()
    if exact_path:
        options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(matmul_integer(weight), options,
                                   providers=["CPUExecutionProvider"])
    a = np.full((M, K), 255, np.uint8)
    return session.run(None, {"A": a})[0], a.astype(np.int64) @ np.full((K, N), weight, np.int64)


def test_the_host_table_says_what_onnxruntime_does_here():
    """255 x 127 + 255 x 127 = 64,770 overflows a 16-bit lane: wrong exactly where
    saturates() says so."""
    got, exact = product(127)
    assert np.array_equal(got, exact) != saturates(), (
        f"host class {host_class()}: ONNX Runtime's fast u8 x s8 product is "
        f"{'exact' if np.array_equal(got, exact) else 'saturated'}, saturates() says otherwise")


def test_seven_bit_weights_are_exact_on_the_fast_kernels():
    got, exact = product(64)  # 2 x 255 x 64 = 32,640 fits
    np.testing.assert_array_equal(got, exact)
    got, exact = product(-64)
    np.testing.assert_array_equal(got, exact)


def test_the_exact_path_is_exact_with_full_range_weights():
    got, exact = product(127, exact_path=True)
    np.testing.assert_array_equal(got, exact)


@pytest.mark.parametrize("precision,quantization,host,expected", [
    (Precision.INT8, {"weight_range": "s8"}, "x86-avx2", True),
    (Precision.INT8, {"method": "static QDQ"}, "x86-avx512", True),  # before weight_range
    (Precision.INT8, None, "x86_64", True),
    (Precision.INT8, {"weight_range": "s7"}, "x86-avx2", False),
    (Precision.INT8, {"weight_range": "s8"}, "x86-avx512-vnni", False),
    (Precision.INT8, {"weight_range": "s8"}, "x86-amx", False),
    (Precision.INT8, {"weight_range": "s8"}, "arm64-dotprod", False),
    (Precision.FP32, None, "x86-avx2", False),
])
def test_which_sessions_take_the_exact_path(precision, quantization, host, expected):
    component = Component("unet", "unet.onnx", "", 0, IOSpec("unet", (), ()), 0.0, 1.0, precision,
                          quantization=quantization)
    assert exact_int8(component, host) is expected
