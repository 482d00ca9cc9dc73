"""The maps' measurement: the calibration fit recovers a known error model, and the bins say
calibrated exactly when the prediction is."""

from __future__ import annotations

import numpy as np

from scanside.training import mapseval


def synthetic_part(b: float, c: float, seed: int, scale: float = 1.0) -> mapseval.Collected:
    rng = np.random.default_rng(seed)
    spread = rng.gamma(2.0, 2.0, 40_000).astype(np.float32) * scale
    noise = rng.uniform(10, 40, 40_000).astype(np.float32) * scale
    error = rng.standard_normal(40_000) * np.sqrt((b * spread) ** 2 + (c * noise) ** 2)
    part = mapseval.Collected()
    part.spread, part.noise, part.error = [spread], [noise], [error.astype(np.float32)]
    part.predicted = [np.sqrt((b * spread) ** 2 + (c * noise) ** 2)]
    return part


def test_the_fit_recovers_a_known_error_model():
    parts = [synthetic_part(2.5, 0.3, seed, scale) for seed, scale in ((0, 0.5), (1, 1), (2, 2))]
    fit = mapseval.fit_calibration(parts)
    assert abs(fit["spread_scale"] - 2.5) < 0.25
    assert abs(fit["noise_scale"] - 0.3) < 0.05


def test_bins_read_calibrated_only_when_the_prediction_is():
    part = synthetic_part(2.0, 0.2, 3)
    summary = mapseval.summary(_with_seconds(part))
    assert summary["worst_ratio"] < 1.1
    part.predicted = [p / 2 for p in part.predicted]  # predicting half the error
    assert mapseval.summary(_with_seconds(part))["worst_ratio"] > 1.8


def test_the_reference_noise_is_taken_out_of_the_error():
    part = synthetic_part(2.0, 0.2, 4)
    own = np.full_like(part.error[0], 10.0)
    part.error = [np.sqrt(part.error[0] ** 2 + own ** 2) * np.sign(part.error[0])]
    part.reference_noise = [own]
    bins = mapseval.calibration_bins(part)
    assert all(b["ratio"] > b["ratio_net"] for b in bins)
    assert max(abs(np.log(b["ratio_net"])) for b in bins) < 0.15


def _with_seconds(part: mapseval.Collected) -> mapseval.Collected:
    part.seconds = [0.1]
    part.flagged = [0.0]
    return part
