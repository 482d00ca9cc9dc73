"""The machine's measured peak: GFLOP/s of a large float32 matrix product in ONNX Runtime,
the same library and kernels (MLAS) the engines run on."""

from __future__ import annotations

import time

import numpy as np

N = 2048


def matmul_model_bytes(n: int = N) -> bytes:
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "peak", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def measure(repeat: int = 5, threads: int | None = None) -> dict[str, object]:
    """Best-of-``repeat`` GFLOP/s of an N x N x N MatMul; numpy (BLAS) where onnx is absent."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((N, N), dtype=np.float32) for _ in range(2))
    try:
        import onnxruntime as ort

        from scanside.runtime.engines.onnxruntime import session_options

        session = ort.InferenceSession(matmul_model_bytes(), session_options(threads),
                                       providers=["CPUExecutionProvider"])
        run, how = (lambda: session.run(None, {"a": a, "b": b})), "onnxruntime MatMul"
    except ImportError:
        run, how = (lambda: a @ b), "numpy matmul (onnx not installed)"
    run()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return {"gflops": 2 * N**3 / best / 1e9, "how": f"{how}, {N}x{N}x{N} float32"}
