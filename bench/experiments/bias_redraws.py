"""Is a measured HU bias a bias, or the noise of one draw? (model card, "How much of the HU
bias is bias").

    python bench/experiments/bias_redraws.py [ENGINE]

1. The real slices at 20/40/80 HU, 16 noise draws each (realct seed 1): the mean bias over the
   flat regions and its standard error.
2. The six validation phantoms with the largest single-draw bias, each rescanned at the
   nominal low dose with 8 fresh noise draws.
ENGINE defaults to the built-in model. Validation phantoms only; the test split is not read.
"""

from __future__ import annotations

import sys

import numpy as np

from scanside.training import ctsim, realct
from scanside.training.evaluate import model_enhancer


def mean_se(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{v.mean():+5.2f} ± {v.std(ddof=1) / np.sqrt(len(v)):.2f} (per draw {v.std(ddof=1):.2f})"


def main(engine: "str | None") -> None:
    _, enhance = model_enhancer(engine, {})
    for name in realct.SLICES:
        for noise in realct.NOISE_HU:
            pairs = realct.real_pairs(names=(name,), noise=(noise,), repeats=16, seed=1)
            flat = int(realct.flat_regions(pairs[0].full).sum())
            model = [realct.hu_bias(enhance(p.low), p.full) for p in pairs]
            given = [realct.hu_bias(p.low, p.full) for p in pairs]
            print(f"{name:13s} {noise:3.0f} HU, {flat} flat px: model {mean_se(model)}, "
                  f"input {mean_se(given)}", flush=True)
    worst = []
    for seed in ctsim.split_seeds("val", 100):
        pair = ctsim.make_pair(seed, ctsim.TEST_SIZE)
        flat = int(realct.flat_regions(pair.full).sum())
        if flat >= 10:
            worst.append((abs(realct.hu_bias(enhance(pair.low), pair.full)), seed, flat, pair))
    for first, seed, flat, pair in sorted(worst, key=lambda row: -row[0])[:6]:
        lows = [ctsim.simulate_scan(pair.phantom.hu, ctsim.LOW_DOSE, 10**7 + 97 * seed + k)
                for k in range(8)]
        again = [realct.hu_bias(enhance(low), pair.full) for low in lows]
        print(f"val phantom {seed}, {flat} flat px: |bias| {first:5.2f} on its draw; "
              f"8 new draws {mean_se(again)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
