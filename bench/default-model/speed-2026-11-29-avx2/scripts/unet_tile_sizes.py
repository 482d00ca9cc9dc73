"""Seconds per 512x512 px of image for the shipped built-in UNet at smaller calls.

    python unet_tile_sizes.py ENGINE_DIR OUT.json

Would tiles small enough for their activations to stay in cache (a 128 px tile's 16-channel
full-resolution tensors are 1 MiB) make the memory-bound UNet cheaper per pixel? One intra-op
thread (a series runs two slices at once, one thread each), median of 4 after a warm-up.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import onnxruntime as ort

from scanside.bench.concurrency import per_image, unet_feeds
from scanside.runtime.artifacts import read_manifest

CALLS = ((64, 1), (128, 1), (128, 16), (192, 1), (256, 1), (256, 4), (512, 1))


def main(engine: str, out: str) -> None:
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
    json.dump({"cpu": platform.processor() or platform.machine(), "threads": 1,
               "onnxruntime": ort.__version__, "calls": rows}, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
