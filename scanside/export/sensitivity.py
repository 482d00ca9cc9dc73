"""Which quantised layers hurt accuracy most, measured on the workload.

For every activation tensor the QDQ graph quantises, the float graph is run on real inputs and
the tensor is put through the same quantise-dequantise (scale and zero point read from the QDQ
graph); its signal-to-quantisation-noise ratio (SQNR, dB) says how much that quantisation
damages it. The Conv/MatMul/Gemm nodes fed by the worst tensors are kept in float.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

FLOOR_DB = 30.0  # int8's ideal SQNR on a well-spread tensor is ~40 dB; below 30 is damage
MAX_FRACTION = 0.02  # keep at most 2 % of the quantised nodes in float (speed is the point)


@dataclass(frozen=True)
class Sensitive:
    node: str
    tensor: str
    sqnr_db: float


def quantised_activations(qdq: onnx.ModelProto) -> dict[str, tuple[float, int, int, int]]:
    """tensor -> (scale, zero point, qmin, qmax) for each activation a QuantizeLinear reads."""
    inits = {i.name: i for i in qdq.graph.initializer}
    out = {}
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale = float(numpy_helper.to_array(inits[node.input[1]]))
        zp = numpy_helper.to_array(inits[node.input[2]])
        info = np.iinfo(zp.dtype)
        out[node.input[0]] = (scale, int(zp), info.min, info.max)
    return out


def sqnr_db(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> float:
    q = np.clip(np.round(x / scale) + zero_point, qmin, qmax)
    noise = x - (q - zero_point) * scale
    signal, error = float(np.mean(x.astype(np.float64) ** 2)), float(np.mean(noise.astype(np.float64) ** 2))
    return float("inf") if error == 0 else 10 * np.log10(max(signal, 1e-30) / error)


def measure(float_path: Path, qdq_path: Path, feeds: Sequence[Mapping[str, np.ndarray]],
            op_types: Sequence[str]) -> list[Sensitive]:
    """Every quantised node with the SQNR of its worst quantised input, worst first."""
    import onnxruntime as ort

    qdq = onnx.load(str(qdq_path), load_external_data=False)
    params = quantised_activations(qdq)
    model = onnx.load(str(float_path), load_external_data=False)
    graph_inputs = {i.name for i in model.graph.input}
    produced = {o for node in model.graph.node for o in node.output}
    # The QDQ pass renames quantised graph outputs (X -> X_QuantizeLinear_Input); map them back.
    params = {t.removesuffix("_QuantizeLinear_Input") if t not in produced | graph_inputs else t: v
              for t, v in params.items()}
    params = {t: v for t, v in params.items() if t in produced | graph_inputs}
    wanted = [t for t in params if t not in graph_inputs]
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    if _external(float_path):
        path = _with_outputs(float_path, model)
        try:  # ORT reads the weights at session creation; the copy is not needed after
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        finally:
            for f in (Path(path), Path(path + ".data")):
                f.unlink(missing_ok=True)
    else:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    worst: dict[str, float] = {}
    names = [o.name for o in session.get_outputs()]
    for feed in feeds:
        values = dict(zip(names, session.run(None, dict(feed))))
        values.update({k: v for k, v in feed.items() if k in params})
        for tensor, (scale, zp, lo, hi) in params.items():
            if tensor in values:
                db = sqnr_db(values[tensor], scale, zp, lo, hi)
                worst[tensor] = min(worst.get(tensor, np.inf), db)
    found = []
    for node in model.graph.node:
        if node.op_type in op_types:
            scores = [(worst[i], i) for i in node.input if i in worst]
            if scores:
                db, tensor = min(scores)
                found.append(Sensitive(node.name, tensor, db))
    return sorted(found, key=lambda s: s.sqnr_db)


def _external(path: Path) -> bool:
    return path.with_name(path.name + ".data").exists()


def _with_outputs(path: Path, model: onnx.ModelProto) -> str:
    """A large model with extra outputs, saved beside the original so its data file resolves."""
    out = path.with_name(path.stem + ".sensitivity.onnx")
    model_with_data = onnx.load(str(path))
    del model_with_data.graph.output[:]
    model_with_data.graph.output.extend(model.graph.output)
    onnx.save_model(model_with_data, str(out), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=out.name + ".data", size_threshold=1024)
    return str(out)


def choose(found: Sequence[Sensitive], quantised_nodes: int) -> list[Sensitive]:
    """The nodes to keep in float: below the floor, at most MAX_FRACTION of them."""
    budget = max(1, int(MAX_FRACTION * quantised_nodes))
    return [s for s in found if s.sqnr_db < FLOOR_DB][:budget]
