"""Does the model know its training scenes better than new ones? (model card, "Memorised
content").

    python bench/experiments/scene_memorisation.py [ENGINE]

Scenes of the training sources at seeds training uses (0, 1, 2, ...) and at the validation
seeds it never draws (realct.VALIDATION_SEED + i), each through the scan chain at 40 HU with a
noise draw training never saw (seed 12345 + scene seed): the model's gain over the input on
each. A gap between the two is content the model memorised rather than learned to denoise.
ENGINE defaults to the built-in model.
"""

from __future__ import annotations

import sys

import numpy as np

from scanside.training import anatomy, realct
from scanside.training.evaluate import model_enhancer, psnr

SCENES = {"head": 3, "natural": 3}  # per source and side: heads are 270-620 px, ~2 s each


def gain(enhance, source: str, seed: int) -> float:
    scene = anatomy.make_scene(source, seed)
    pair = realct.scan_pairs(f"{source}#{seed}", scene.hu, scene.pixel_mm, (40.0,), 1,
                             seed=12345 + seed)[0]
    return psnr(pair.full, enhance(pair.low)) - psnr(pair.full, pair.low)


def main(engine: "str | None") -> None:
    _, enhance = model_enhancer(engine, {})
    for source, count in SCENES.items():
        seen = [gain(enhance, source, i) for i in range(count)]
        new = [gain(enhance, source, realct.VALIDATION_SEED + i) for i in range(count)]
        print(f"{source:8s} gain over the input at 40 HU: training scenes "
              f"{' '.join(f'{g:+.2f}' for g in seen)} (mean {np.mean(seen):+.2f}), held-out "
              f"{' '.join(f'{g:+.2f}' for g in new)} (mean {np.mean(new):+.2f}) dB", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
