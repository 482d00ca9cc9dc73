"""Time candidate shapes of the built-in UNet in ONNX Runtime at 512 px, random weights.

    python bench/experiments/unet_shapes.py [OUT.json]

Each recipe's UNet is built from its config, exported as scanside exports it (TorchScript
tracer, opset 17, dynamic height and width), and run at 1 and 2 intra-op threads on one
random feed: median of 4 runs after one warm-up. A shape's speed does not depend on its weights.
OUT.json defaults to bench/results/<UTC date>-<host class>/unet-shapes-512.json.
"""

from __future__ import annotations

import io
import platform
import sys
from pathlib import Path

import onnxruntime as ort
import torch
from diffusers import UNet2DConditionModel

from scanside.bench import report
from scanside.bench.concurrency import per_image, unet_feeds
from scanside.training.recipes import ct_unet, recipe
from scanside.runtime.artifacts import read_manifest
from scanside.runtime.default import default_engine_dir

SIZE = 512
SHAPES = {
    "ct-default": recipe("ct-default").unet,
    "ct-fast: layers_per_block (0, 1, 1, 1)": recipe("ct-fast").unet,
    "layers_per_block (0, 2, 2, 2)": ct_unet((16, 32, 64, 96), 64, 8, 128,
                                             layers_per_block=(0, 2, 2, 2)),
    "8 channels at full resolution": ct_unet((8, 32, 64, 96), 64, 8, 128),
    "ct-deep": recipe("ct-deep").unet,
}


class Eps(torch.nn.Module):
    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, states):
        return self.unet(sample, timestep, states, return_dict=False)[0]


def onnx_bytes(config: dict) -> tuple[bytes, int]:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    buf = io.BytesIO()
    torch.onnx.export(Eps(unet), (torch.randn(1, 8, 128, 128), torch.tensor([1.0]),
                                  torch.randn(1, 77, 64)), buf,
                      input_names=["sample", "timestep", "encoder_hidden_states"],
                      output_names=["out_sample"],
                      dynamic_axes={"sample": {2: "h", 3: "w"}, "out_sample": {2: "h", 3: "w"}},
                      opset_version=17, do_constant_folding=True, dynamo=False)
    return buf.getvalue(), sum(p.numel() for p in unet.parameters())


def median_s(model: bytes, threads: int, feed: dict) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return per_image(lambda: session.run(None, feed), 1, repeat=4)


def main(out: "str | None" = None) -> None:
    # Every shape has the shipped UNet's inputs: its manifest gives the feed.
    feed = unet_feeds(read_manifest(default_engine_dir()), SIZE, 1)
    rows = {}
    for name, config in SHAPES.items():
        model, params = onnx_bytes(config)
        rows[name] = {"params_m": round(params / 1e6, 3),
                      "s_1_thread": median_s(model, 1, feed),
                      "s_2_threads": median_s(model, 2, feed)}
        print(name, rows[name], flush=True)
    base = rows["ct-default"]
    for row in rows.values():
        row["vs_ct_default_1_thread"] = row["s_1_thread"] / base["s_1_thread"]
        row["vs_ct_default_2_threads"] = row["s_2_threads"] / base["s_2_threads"]
    path = Path(out) if out else report.results_dir() / "unet-shapes-512.json"
    report.write_json({"size": SIZE, "cpu": platform.processor() or platform.machine(),
                       "onnxruntime": ort.__version__, "torch": torch.__version__, "shapes": rows},
                      path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
