"""Latency summaries: median, p90 and min of a list of seconds."""

from __future__ import annotations

import numpy as np


def summary(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples, dtype=np.float64)
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
            "min": float(values.min()), "n": int(values.size)}
