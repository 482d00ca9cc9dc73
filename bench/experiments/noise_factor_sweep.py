"""Does a noise-conditioned model use its noise channel? (model card, run 17).

    python bench/experiments/noise_factor_sweep.py ENGINE [FACTOR ...]

Enhances the held-out synthetic anatomy (validation) and CT_small (2 noise draws) at 20/40/80
HU, telling the model FACTOR times the noise estimated from each image (default factors 0.5,
1, 2, 4), and prints the gain over the input per level. A model that uses the channel removes
less at factors under 1 and more above; a flat row means the channel is ignored. Also prints
how large the noise channel's input weights are against the image channels'.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from scanside.training import realct
from scanside.training.evaluate import HU_WINDOW, model_enhancer, psnr


def channel_weights(engine: Path) -> str:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(engine / "unet.onnx")).graph
    first = next(n for n in graph.node if n.op_type == "Conv")
    weights = {t.name: t for t in graph.initializer}
    w = np.abs(numpy_helper.to_array(weights[first.input[1]]))  # (out, in, 3, 3)
    return (f"first convolution, mean |weight| per input channel: noisy latent "
            f"{w[:, :4].mean():.4f}, image {w[:, 4:8].mean():.4f}, noise level "
            f"{w[:, 8:].mean():.4f}")


def main(engine: Path, factors: list[float]) -> None:
    print(channel_weights(engine))
    pipe, _ = model_enhancer(engine, {})
    sets = {"validation anatomy": realct.validation_pairs(),
            "CT_small (test)": realct.real_pairs(names=("CT_small.dcm",), repeats=2)}
    for title, pairs in sets.items():
        print(f"{title}: gain over the input, dB, at 20 / 40 / 80 HU")
        for factor in factors:
            gains: dict[float, list[float]] = {}
            for p in pairs:
                out = HU_WINDOW.from_unit(pipe.enhance(HU_WINDOW.to_unit(p.low),
                                                       noise_factor=factor))
                gains.setdefault(p.noise_hu, []).append(psnr(p.full, out) - psnr(p.full, p.low))
            row = " / ".join(f"{np.mean(gains[level]):+.2f}" for level in sorted(gains))
            print(f"  noise factor {factor:g}: {row}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [float(f) for f in sys.argv[2:]] or [0.5, 1.0, 2.0, 4.0])
