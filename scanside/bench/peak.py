"""The machine's measured peak: the best GFLOP/s of two large float32 products in ONNX Runtime,
the same library and kernels (MLAS) the engines run on — a 2048³ MatMul and a 3×3
convolution of 256 channels at 64×64 (the blocked NCHWc path UNets and VAEs take).

One MatMul alone under-read this machine: on a 2-core AMD EPYC (family 25 model 17) it gave
134–185 GFLOP/s from run to run while the engines' convolutions ran at 200, so stages read
above 100 % of "peak". The best of both is what the machine's kernels can do here.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

N = 2048
CONV_CHANNELS, CONV_SIDE = 256, 64


def matmul_model_bytes(n: int = N) -> bytes:
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "peak", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def conv_model_bytes(channels: int = CONV_CHANNELS, side: int = CONV_SIDE) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, side, side])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, side, side])
    weight = np.random.default_rng(0).standard_normal((channels, channels, 3, 3), dtype=np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "peak", [x], [y], [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def best_seconds(run: Callable[[], object], repeat: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_integer_model_bytes(n: int = N) -> bytes:
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "peak",
                              [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def measure(repeat: int = 5, threads: int | None = None, int8: bool = False) -> dict[str, object]:
    """Best-of-``repeat`` GFLOP/s of the MatMul and the convolution, and the better of the two;
    numpy's (BLAS) matmul where onnx is absent. ``int8``: also ``int8_gops``, the u8 x s8
    MatMulInteger rate (MLAS's VNNI/AMX path where the CPU has it, as the engines' QDQ nodes)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((N, N), dtype=np.float32) for _ in range(2))
    matmul_flops = 2 * N**3
    try:
        import onnxruntime as ort

        from scanside.runtime.engines.onnxruntime import session_options

        def session(model: bytes):
            return ort.InferenceSession(model, session_options(threads),
                                        providers=["CPUExecutionProvider"])
    except ImportError:
        gflops = matmul_flops / best_seconds(lambda: a @ b, repeat) / 1e9
        return {"gflops": gflops, "matmul_gflops": gflops,
                "how": f"numpy matmul (onnx not installed), {N}x{N}x{N} float32"}
    matmul = session(matmul_model_bytes())
    matmul_gflops = matmul_flops / best_seconds(lambda: matmul.run(None, {"a": a, "b": b}),
                                                repeat) / 1e9
    x = rng.standard_normal((1, CONV_CHANNELS, CONV_SIDE, CONV_SIDE), dtype=np.float32)
    conv = session(conv_model_bytes())
    conv_flops = 2 * CONV_CHANNELS**2 * 9 * CONV_SIDE**2
    # The convolution is 4.8 GFLOP against the MatMul's 17: more rounds for the same time.
    conv_gflops = conv_flops / best_seconds(lambda: conv.run(None, {"x": x}), 4 * repeat) / 1e9
    extra = {}
    if int8:
        ua = rng.integers(0, 256, (N, N), dtype=np.uint8)
        sb = rng.integers(-128, 128, (N, N), dtype=np.int8)
        integer = session(matmul_integer_model_bytes())
        extra["int8_gops"] = matmul_flops / best_seconds(
            lambda: integer.run(None, {"a": ua, "b": sb}), repeat) / 1e9
    return {"gflops": max(matmul_gflops, conv_gflops), "matmul_gflops": matmul_gflops,
            "conv_gflops": conv_gflops, **extra,
            "how": (f"onnxruntime, best of a {N}x{N}x{N} MatMul ({matmul_gflops:.0f}) and a 3x3 "
                    f"Conv {CONV_CHANNELS}->{CONV_CHANNELS} at {CONV_SIDE}x{CONV_SIDE} "
                    f"({conv_gflops:.0f}), float32")}
