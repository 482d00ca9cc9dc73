"""Seconds per 512x512 px of image for the shipped built-in UNet at smaller calls.

    python bench/experiments/unet_tile_sizes.py [ENGINE_DIR [OUT.json]]

Would tiles small enough for their activations to stay in cache (a 128 px tile's 16-channel
full-resolution tensors are 1 MiB) make the memory-bound UNet cheaper per pixel? One intra-op
thread (a series runs two slices at once, one thread each), median of 4 after a warm-up.
ENGINE_DIR defaults to the built-in model, OUT.json to
bench/results/<UTC date>-<host class>/unet-tile-sizes.json.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import onnxruntime as ort

from scanside.bench import report
from scanside.bench.concurrency import per_image, unet_feeds
from scanside.runtime.artifacts import read_manifest
from scanside.runtime.default import default_engine_dir

CALLS = ((64, 1), (128, 1), (128, 16), (192, 1), (256, 1), (256, 4), (512, 1))


def main(engine: "str | None" = None, out: "str | None" = None) -> None:
    engine = Path(engine) if engine else default_engine_dir()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(Path(engine) / "unet.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    manifest = read_manifest(Path(engine))
    rows = []
    for size, batch in CALLS:
        feed = unet_feeds(manifest, size, batch)
        median = per_image(lambda: session.run(None, feed), 1, repeat=4)
        rows.append({"size": size, "batch": batch, "median_s": median,
                     "s_per_512px_image": median * 512 * 512 / (size * size * batch)})
        print(rows[-1], flush=True)
    path = Path(out) if out else report.results_dir() / "unet-tile-sizes.json"
    report.write_json({"cpu": platform.processor() or platform.machine(), "threads": 1,
                       "onnxruntime": ort.__version__, "calls": rows}, path, engine=engine)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
