"""Measuring lesion candidates: the built-in lesion model against a classical blob detector.

Slices go through the site evaluation's chain (``siteeval.scan_slice``): faint disks (radius
3-10 px, 10-40 HU of either sign) drawn into flat soft tissue, then projected and
reconstructed at the chosen noise. Two sets, as for the maps (``mapseval``): held-out synthetic
anatomy (the threshold of the model's candidates may be chosen here) and real slices
(measurement only), the latter also without inserted lesions, for false candidates on real
anatomy.

A candidate finds a lesion when its centroid lies within the lesion's radius + 2 px of the
lesion's centre (at least 4 px); each lesion and each candidate is matched once. Figures:
sensitivity by radius band and contrast band, and over the issue's target group (radius >= 5
px, |contrast| >= 20 HU); false candidates per slice; the Dice of each found lesion's region
with its disk; seconds per slice.

The classical detector (``log_detect``): the scale-normalised Laplacian of Gaussian at the
sizes of the inserted disks (sigma = r / sqrt 2 for r in 3, 5, 7, 10 px), both signs, local
extrema over space and scale, kept where the smoothed input is flat soft tissue
(-200..250 HU, FLAT_STD_HU), strongest first. Its threshold is set, per noise level and image kind, to the one that gives
at most one false candidate per slice *on the very images it is scored on* (an oracle, which
favours it); it runs on the low-dose input and on the built-in denoiser's output.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from scanside.dicom import candidates as found
from scanside.runtime import Pipeline, Sampling

from . import ctsim, mapseval, siteeval

RADIUS_BANDS = ((3.0, 5.0), (5.0, 7.5), (7.5, 10.01))
CONTRAST_BANDS = ((10.0, 20.0), (20.0, 30.0), (30.0, 40.01))
TARGET = (5.0, 20.0)  # radius >= 5 px and |contrast| >= 20 HU: the issue's figure
LOG_RADII = (3.0, 5.0, 7.0, 10.0)
TISSUE_HU = (-200.0, 250.0)
# Where the classical detector looks: soft tissue that is flat at a lesion's scale (std of the
# 2 px-smoothed image over 31 px under 25 HU: a 10 px, 40 HU disk passes, an organ's edge
# does not), as a CAD system's candidate region; without it edges outnumber lesions.
FLAT_WINDOW_PX = 31
FLAT_STD_HU = 25.0
MATCH_MARGIN_PX = 2.0
MATCH_MIN_PX = 4.0


@dataclass(frozen=True)
class Mark:
    """One detection: centre (row, col), a strength to rank by, and its region (or None)."""

    center: tuple[float, float]
    score: float
    region: Optional[np.ndarray] = None  # bool, full image


def match(marks: Sequence[Mark], lesions: Sequence[ctsim.Lesion]) -> tuple[list[int], int]:
    """(for each lesion the index of the mark that found it, or -1; false marks)."""
    taken: set[int] = set()
    hits = []
    for lesion in lesions:
        reach = max(lesion.radius + MATCH_MARGIN_PX, MATCH_MIN_PX)
        best, best_d = -1, np.inf
        for i, mark in enumerate(marks):
            d = float(np.hypot(mark.center[0] - lesion.y, mark.center[1] - lesion.x))
            if i not in taken and d <= reach and d < best_d:
                best, best_d = i, d
        if best >= 0:
            taken.add(best)
        hits.append(best)
    return hits, len(marks) - len(taken)


def log_detect(hu: np.ndarray, limit: int = 200) -> list[Mark]:
    """Scale-normalised LoG extrema (both signs) over LOG_RADII, in soft tissue."""
    from scipy import ndimage

    stack = np.stack([-(r * r / 2) * ndimage.gaussian_laplace(hu.astype(np.float32), r / np.sqrt(2))
                      for r in LOG_RADII])  # a bright disk gives a positive peak
    smooth = ndimage.gaussian_filter(hu.astype(np.float64), 2.0)
    mean = ndimage.uniform_filter(smooth, FLAT_WINDOW_PX)
    std = np.sqrt(np.maximum(ndimage.uniform_filter(smooth * smooth, FLAT_WINDOW_PX) - mean ** 2, 0))
    tissue = (mean > TISSUE_HU[0]) & (mean < TISSUE_HU[1]) & (std < FLAT_STD_HU)
    marks = []
    for sign in (1.0, -1.0):
        response = sign * stack
        peak = response == ndimage.maximum_filter(response, size=(len(LOG_RADII), 7, 7))
        peak &= (response > 0) & tissue[None]
        scales, rows, cols = np.nonzero(peak)
        for s, r, c in zip(scales, rows, cols):
            marks.append(Mark((float(r), float(c)), float(response[s, r, c])))
    marks.sort(key=lambda m: -m.score)
    return suppress(marks)[:limit]


def suppress(marks: list[Mark], distance: float = 4.0) -> list[Mark]:
    """Marks in score order, each dropped when a stronger one lies within ``distance`` px."""
    kept: list[Mark] = []
    for mark in marks:
        if all(np.hypot(mark.center[0] - k.center[0], mark.center[1] - k.center[1]) > distance
               for k in kept):
            kept.append(mark)
    return kept


@dataclass
class Tally:
    """Per detector and noise level: every lesion's (radius, |contrast|, found, dice) and
    every slice's false marks."""

    lesions: list[tuple[float, float, bool, float]] = field(default_factory=list)
    false: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, marks: Sequence[Mark], lesions: Sequence[ctsim.Lesion],
            shape: tuple[int, int]) -> None:
        hits, false = match(marks, lesions)
        self.false.append(false)
        for lesion, hit in zip(lesions, hits):
            dice = float("nan")
            if hit >= 0 and marks[hit].region is not None:
                disk = ctsim.ellipse(shape, lesion.y, lesion.x, lesion.radius, lesion.radius)
                region = marks[hit].region
                dice = 2 * float((disk & region).sum()) / float(disk.sum() + region.sum())
            self.lesions.append((lesion.radius, abs(lesion.contrast_hu), hit >= 0, dice))

    def summary(self) -> dict[str, Any]:
        rows = np.array(self.lesions, dtype=float).reshape(-1, 4)

        def sensitivity(pick: np.ndarray) -> Optional[float]:
            return round(float(rows[pick, 2].mean()), 3) if pick.any() else None

        radius, contrast = rows[:, 0], rows[:, 1]
        target = (radius >= TARGET[0]) & (contrast >= TARGET[1])
        dice = rows[target & (rows[:, 2] > 0), 3]
        dice = dice[np.isfinite(dice)]
        return {
            "lesions": len(rows), "target_lesions": int(target.sum()),
            "sensitivity_target": sensitivity(target),
            "false_per_slice": round(float(np.mean(self.false)), 2) if self.false else None,
            "dice_found_target": round(float(np.median(dice)), 3) if dice.size else None,
            "by_radius": {f"{lo:g}-{min(hi, 10):g}": sensitivity((radius >= lo) & (radius < hi)
                                                                 & (contrast >= TARGET[1]))
                          for lo, hi in RADIUS_BANDS},
            "by_contrast": {f"{lo:g}-{min(hi, 40):g}": sensitivity(
                (contrast >= lo) & (contrast < hi) & (radius >= TARGET[0]))
                for lo, hi in CONTRAST_BANDS},
            **({"seconds_median": round(float(np.median(self.seconds)), 3)}
               if self.seconds else {}),
        }


def model_marks(pipeline: Pipeline, low_hu: np.ndarray, sampling: Sampling,
                seeds: Optional[int], threshold: Optional[float]) -> tuple[list[Mark], float]:
    started = time.perf_counter()
    result = pipeline.segment(mapseval.unit(low_hu), sampling, seeds=seeds, threshold=threshold)
    marks = [Mark(c.center_rc, c.score, c.full_mask(low_hu.shape))
             for c in found.find(result.probability, result.mask, low_hu)]
    return marks, time.perf_counter() - started


def oracle_threshold(scored: Sequence[tuple[list[Mark], Sequence[ctsim.Lesion]]],
                     per_slice: float = 1.0) -> float:
    """The lowest score threshold at which the marks above it give at most ``per_slice``
    false marks per slice over ``scored`` (the LoG detector's oracle operating point)."""
    scores = sorted({m.score for marks, _ in scored for m in marks})
    lo, hi = 0, len(scores) - 1
    best = scores[-1] if scores else 0.0
    while lo <= hi:  # false marks fall as the threshold rises
        mid = (lo + hi) // 2
        t = scores[mid]
        false = np.mean([match([m for m in marks if m.score >= t], lesions)[1]
                         for marks, lesions in scored])
        if false <= per_slice:
            best, hi = t, mid - 1
        else:
            lo = mid + 1
    return best


def evaluate_set(pairs: Sequence[siteeval.SitePair], model: Pipeline, denoiser: Pipeline,
                 sampling: Sampling, seeds: Optional[int], threshold: Optional[float],
                 echo: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Figures per noise level for the model, LoG on the input and LoG on the denoised."""
    out: dict[str, dict[str, Any]] = {}
    for sigma in sorted({p.noise_hu for p in pairs}):
        level = [p for p in pairs if p.noise_hu == sigma]
        tallies = {"model": Tally(), "log_input": Tally(), "log_denoised": Tally()}
        logs: dict[str, list] = {"log_input": [], "log_denoised": []}
        for pair in level:
            marks, seconds = model_marks(model, pair.low, sampling, seeds, threshold)
            tallies["model"].add(marks, pair.phantom.lesions, pair.low.shape)
            tallies["model"].seconds.append(seconds)
            denoised = denoiser.enhance(mapseval.unit(pair.low)) * mapseval.WINDOW_HU - 1000.0
            logs["log_input"].append((log_detect(pair.low), pair.phantom.lesions))
            logs["log_denoised"].append((log_detect(denoised), pair.phantom.lesions))
        thresholds = {}
        for name, scored in logs.items():
            t = oracle_threshold(scored)
            thresholds[name] = round(t, 2)
            for marks, lesions in scored:
                tallies[name].add([m for m in marks if m.score >= t], lesions, (1, 1))
        out[f"{sigma:g}"] = {name: tally.summary() for name, tally in tallies.items()}
        out[f"{sigma:g}"]["log_thresholds"] = thresholds
        echo(f"{sigma:g} HU: " + "; ".join(
            f"{name} sens {v['sensitivity_target']} fp {v['false_per_slice']}"
            for name, v in out[f"{sigma:g}"].items() if isinstance(v, dict) and "lesions" in v))
    return out


def timing(model: Pipeline, sampling: Sampling, seeds: Optional[int], repeats: int = 3) -> float:
    """Median seconds to segment and measure a 512 x 512 slice."""
    rng = np.random.default_rng(0)
    hu = rng.normal(40.0, 40.0, (512, 512)).astype(np.float32)
    times = [model_marks(model, hu, sampling, seeds, None)[1] for _ in range(repeats)]
    return round(float(np.median(times)), 3)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .site import read_scans

    parser = argparse.ArgumentParser(prog="python -m scanside.training.lesioneval",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", type=Path, help="default: the built-in lesion model")
    parser.add_argument("--synthetic", type=int, default=16)
    parser.add_argument("--on", type=Path, nargs="*", default=[])
    parser.add_argument("--max-slices", type=int, default=12)
    parser.add_argument("--noise", type=float, nargs="+", default=[40.0])
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from scanside.runtime.default import default_lesion_engine_dir

    echo = lambda text: print(text, flush=True)  # noqa: E731
    model = Pipeline.load(args.engine or default_lesion_engine_dir())
    denoiser = Pipeline.load()
    sampling = Sampling(steps=args.steps)
    s, seeds, threshold = model.segment_settings(sampling, args.seeds, args.threshold)
    report: dict[str, Any] = {
        "engine": str(args.engine or "built-in lesion model"), "steps": s.steps, "seeds": seeds,
        "threshold": threshold, "seconds_512": timing(model, sampling, args.seeds)}
    echo(f"512 x 512: {report['seconds_512']} s per slice")
    if args.synthetic:
        pairs = mapseval.simulate(mapseval.synthetic_slices(args.synthetic), args.noise, 1,
                                  args.workers)
        report["synthetic"] = evaluate_set(pairs, model, denoiser, sampling, args.seeds,
                                           args.threshold, echo)
    if args.on:
        scans = read_scans(args.on, args.max_slices, echo)
        slices = [(series.name, x.hu, x.pixel_mm) for series in scans.series
                  for x in series.slices]
        report["real_slices"] = len(slices)
        pairs = mapseval.simulate(slices, args.noise, 2, args.workers)
        report["real"] = evaluate_set(pairs, model, denoiser, sampling, args.seeds,
                                      args.threshold, echo)
        clean = mapseval.simulate(slices, args.noise, 2, args.workers, lesions=0.0)
        empty = Tally()
        for pair in clean:
            empty.add(model_marks(model, pair.low, sampling, args.seeds, args.threshold)[0], (),
                      pair.low.shape)
        report["real_without_lesions_false_per_slice"] = round(float(np.mean(empty.false)), 2)
        echo(f"real slices without lesions: {report['real_without_lesions_false_per_slice']} "
             "false candidates per slice")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
