"""The shipped built-in UNet at 512 px in ONNX Runtime and in OpenVINO's CPU plugin.

    pip install openvino   # only for this measurement; scanside does not depend on it
    python bench/experiments/openvino_vs_ort.py [ENGINE_DIR [OUT.json]]

Same ONNX file, same random feed, fp32 in both (OpenVINO's INFERENCE_PRECISION_HINT f32,
LATENCY hint, shapes fixed at 512 px), 1 and 2 threads; the two interleaved, 5 rounds, after a
warm-up that also checks they agree. ENGINE_DIR defaults to the built-in model, OUT.json to
bench/results/<UTC date>-<host class>/openvino-vs-ort-512.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov

from scanside.bench import report
from scanside.bench.concurrency import unet_feeds
from scanside.runtime.artifacts import read_manifest
from scanside.runtime.default import default_engine_dir

SIZE = 512


def main(engine: "str | None" = None, out: "str | None" = None) -> None:
    engine = Path(engine) if engine else default_engine_dir()
    path = str(engine / "unet.onnx")
    feed = unet_feeds(read_manifest(Path(engine)), SIZE, 1)
    core = ov.Core()
    result = {"size": SIZE, "cpu": core.get_property("CPU", "FULL_DEVICE_NAME"),
              "onnxruntime": ort.__version__, "openvino": ov.__version__, "threads": {}}
    for threads in (1, 2):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        model = core.read_model(path)
        model.reshape({name: list(value.shape) for name, value in feed.items()})
        request = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
        runs = {"onnxruntime": lambda: session.run(None, feed)[0],
                "openvino": lambda: next(iter(request.infer(feed).values()))}
        a, b = runs["onnxruntime"](), runs["openvino"]()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(5):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        result["threads"][threads] = {
            "max_abs_diff": float(np.abs(a - b).max()),
            **{f"{name}_median_s": float(np.median(t)) for name, t in times.items()},
            **{f"{name}_min_s": float(np.min(t)) for name, t in times.items()}}
        print(threads, result["threads"][threads], flush=True)
    out = Path(out) if out else report.results_dir() / "openvino-vs-ort-512.json"
    report.write_json(result, out, engine=engine)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
