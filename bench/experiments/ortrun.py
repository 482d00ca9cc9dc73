"""What the scripts beside this one share: an ONNX Runtime CPU session of an engine's UNet
(2 intra-op threads, optional session config entries) and interleaved timing of several."""
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(engine: Path, extra: "dict[str, str] | None" = None,
            level: "ort.GraphOptimizationLevel | None" = None) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    o.log_severity_level = 3
    if level is not None:
        o.graph_optimization_level = level
    for k, v in (extra or {}).items():
        o.add_session_config_entry(k, v)
    return ort.InferenceSession(str(engine / "unet.onnx"), o, providers=["CPUExecutionProvider"])


def interleaved(runs: "dict[str, ort.InferenceSession]", feed: dict, rounds: int) -> dict:
    """Each session once per round, in turn, after one warm-up each: seconds per call."""
    for s in runs.values():
        s.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, s in runs.items():
            start = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - start)
    return {k: np.array(t) for k, t in times.items()}
