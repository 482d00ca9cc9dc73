"""Measuring the maps (scanside.runtime.maps): does the uncertainty predict the error, and does
the change mask catch the lesions the model loses?

Slices go through the site evaluation's chain (``siteeval.scan_slice``: faint disks drawn into
flat soft tissue, projected, reconstructed at 1e7 photons as the reference and at 20/40/80 HU
of noise as the inputs). Two sets:

- **held-out synthetic anatomy** (``anatomy`` scenes from seeds no training run draws): the
  calibration of the uncertainty is fitted here, and only here;
- **real slices** (a site's scans, read as ``models evaluate --on`` reads them): measurement.

Figures, over the object's pixels inside the window: the actual error |enhanced - reference|
against the predicted uncertainty in ten bins of equal pixel count (RMS error / mean
prediction per bin: 1 is calibrated); for each inserted lesion the reference shows, whether
the model lost it (``evaluate``'s rule: under half its contrast kept) and whether the change
mask flags it (any flagged pixel on the disk, and half of the disk flagged); the flagged share
of the object's pixels; and the time of an enhancement with maps against the same ensemble
without.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from scanside.runtime import Pipeline, Sampling
from scanside.runtime.maps import MIN_VIEWS

from . import anatomy, ctsim, evaluate, siteeval

WINDOW_HU = 2000.0  # the model's window [-1000, 1000]: one image unit is 2000 HU
SYNTHETIC_SOURCES = ("head", "chest", "tissue", "phantom")
HELD_OUT_SEED = 900_000  # anatomy scenes from here on: no training run draws them
BINS = 10


def unit(hu: np.ndarray) -> np.ndarray:
    return (ctsim.to_model_range(hu) + 1) / 2


@dataclass
class Collected:
    """Per-pixel and per-lesion records of one set of slices at one noise level."""

    spread: list[np.ndarray] = field(default_factory=list)  # HU, the views' raw spread
    noise: list[np.ndarray] = field(default_factory=list)  # HU, the local noise per pixel
    predicted: list[np.ndarray] = field(default_factory=list)  # HU, the uncertainty map
    error: list[np.ndarray] = field(default_factory=list)  # HU, enhanced - reference
    lesions: list[dict[str, Any]] = field(default_factory=list)
    flagged: list[float] = field(default_factory=list)  # share of the object's pixels
    # HU, the reference's own noise per pixel (what the model removes from the reference),
    # measured when the reference is a real scan with noise of its own.
    reference_noise: list[np.ndarray] = field(default_factory=list)
    real: bool = False
    seconds: list[float] = field(default_factory=list)

    def add(self, pipeline: Pipeline, pair: siteeval.SitePair, sampling: Sampling) -> None:
        started = time.perf_counter()
        result = pipeline.enhance_maps(unit(pair.low), sampling)
        self.seconds.append(time.perf_counter() - started)
        maps = result.maps
        ref = unit(pair.full)
        inside = (ref > 0.005) & (ref < 0.995) & (pair.full > siteeval.OBJECT_HU)
        noise = pixel_noise_hu(result.image, unit(pair.low))
        self.spread.append(maps.spread[inside] * WINDOW_HU)
        self.noise.append(noise[inside])
        self.predicted.append(maps.uncertainty[inside] * WINDOW_HU)
        self.error.append((result.image - ref)[inside] * WINDOW_HU)
        self.flagged.append(float(maps.flagged[inside].mean()))
        if self.real:
            own = pipeline.enhance(ref, sampling)
            self.reference_noise.append(pixel_noise_hu(own, ref)[inside])
        output = result.image * WINDOW_HU - 1000.0
        for lesion in pair.phantom.lesions:
            disk = ctsim.ellipse(ref.shape, lesion.y, lesion.x, lesion.radius, lesion.radius)
            got = evaluate.region_contrast(output, lesion, pair.phantom.hu)
            reference = evaluate.region_contrast(pair.full, lesion, pair.phantom.hu)
            self.lesions.append({
                "radius": lesion.radius, "contrast": lesion.contrast_hu,
                "reference": reference, "output": got,
                "flagged_share": float(maps.flagged[disk].mean()) if disk.any() else 0.0})


def pixel_noise_hu(enhanced: np.ndarray, source: np.ndarray) -> np.ndarray:
    from scanside.runtime.maps import pixel_noise

    return pixel_noise(enhanced, source) * WINDOW_HU


def least_squares(s2: np.ndarray, n2: np.ndarray, e2: np.ndarray) -> tuple[float, float]:
    """b, c of error^2 ~ b^2 spread^2 + c^2 noise^2 (non-negative least squares, 2 terms)."""
    coef, *_ = np.linalg.lstsq(np.stack([s2, n2], axis=1), e2, rcond=None)
    if coef.min() < 0:  # refit with the negative term left out
        keep = int(np.argmax(coef))
        only = np.linalg.lstsq(np.stack([s2, n2], axis=1)[:, keep:keep + 1], e2, rcond=None)[0][0]
        coef = np.zeros(2)
        coef[keep] = only
    b, c = np.sqrt(np.maximum(coef, 0.0))
    return float(b), float(c)


def worst_log_ratio(predicted: np.ndarray, error: np.ndarray, bins: int = BINS) -> float:
    """max |log(RMS error / mean prediction)| over ``bins`` bins of equal pixel count."""
    order = np.argsort(predicted, kind="stable")
    worst = 0.0
    for chunk in np.array_split(order, bins):
        rms = np.sqrt(np.mean(error[chunk] ** 2))
        worst = max(worst, abs(float(np.log(rms / max(float(predicted[chunk].mean()), 1e-6)))))
    return worst


def fit_calibration(parts: Sequence[Collected], sample: int = 60_000) -> dict[str, float]:
    """b, c of uncertainty = sqrt((b spread)^2 + (c noise)^2) that make the worst bin of any
    part (noise level) closest to calibrated: a grid around the least-squares fit, scored by
    the largest |log(RMS error / prediction)| over every part's bins (the figure the maps
    are judged by), on up to ``sample`` pixels of each part."""
    rng = np.random.default_rng(0)
    levels = []
    for part in parts:
        s, n, e = (np.concatenate(x) for x in (part.spread, part.noise, part.error))
        pick = rng.choice(len(s), min(len(s), sample), replace=False)
        levels.append((s[pick], n[pick], e[pick]))
    b0, c0 = least_squares(*(np.concatenate([lv[i] for lv in levels]) ** 2 for i in range(3)))
    best = (np.inf, b0, c0)
    for b in max(b0, 1e-3) * np.exp(np.linspace(-0.8, 0.8, 33)):
        for c in np.concatenate([[0.0], max(c0, 1e-3) * np.exp(np.linspace(-1.5, 1.5, 31))]):
            worst = max(worst_log_ratio(np.sqrt((b * s) ** 2 + (c * n) ** 2), e)
                        for s, n, e in levels)
            if worst < best[0]:
                best = (worst, b, c)
    return {"spread_scale": round(float(best[1]), 4), "noise_scale": round(float(best[2]), 4)}


def calibration_bins(part: Collected, bins: int = BINS) -> list[dict[str, float]]:
    """RMS error against the mean predicted uncertainty in ``bins`` bins of equal pixel count;
    ``_net``: the error less the reference's own noise (a real slice's reference carries its
    scan's noise, which the model rightly removes: it reads as error)."""
    predicted = np.concatenate(part.predicted)
    error = np.concatenate(part.error)
    own = np.concatenate(part.reference_noise) if part.reference_noise else None
    order = np.argsort(predicted, kind="stable")
    rows = []
    for chunk in np.array_split(order, bins):
        square = float(np.mean(error[chunk] ** 2))
        mean = max(float(predicted[chunk].mean()), 1e-6)
        row = {"predicted_hu": round(mean, 2), "rms_error_hu": round(square ** 0.5, 2),
               "ratio": round(square ** 0.5 / mean, 3), "share": round(len(chunk) / len(order), 3)}
        if own is not None:
            net = max(square - float(np.mean(own[chunk] ** 2)), 0.0) ** 0.5
            row.update({"rms_error_net_hu": round(net, 2), "ratio_net": round(net / mean, 3)})
        rows.append(row)
    return rows


def lesion_figures(part: Collected) -> dict[str, Any]:
    """Lesions the reference shows: how many the model lost, and how many of those (and of
    all) the change mask flags."""
    shown = [les for les in part.lesions
             if evaluate.reference_shows(np.array([les["reference"]]),
                                         np.array([les["contrast"]]))[0]]
    lost = [les for les in shown
            if les["output"] * np.sign(les["reference"]) < 0.5 * abs(les["reference"])]
    share = lambda items, cut: (float(np.mean([les["flagged_share"] > cut for les in items]))  # noqa: E731
                                if items else None)
    return {"lesions_shown": len(shown), "lost": len(lost),
            "lost_flagged_any": share(lost, 0.0), "lost_flagged_half": share(lost, 0.5),
            "kept_flagged_any": share([les for les in shown if les not in lost], 0.0)}


def summary(part: Collected) -> dict[str, Any]:
    bins = calibration_bins(part)
    worst = lambda key: (max(max(r), 1 / max(min(r), 1e-6))  # noqa: E731
                         if (r := [b[key] for b in bins if b["share"] >= 0.05]) else None)
    return {"slices": len(part.seconds), "bins": bins, "worst_ratio": worst("ratio"),
            **({"worst_ratio_net": worst("ratio_net")} if part.reference_noise else {}),
            "flagged_share_mean": float(np.mean(part.flagged)),
            "seconds_median": float(np.median(part.seconds)), **lesion_figures(part)}


def synthetic_slices(count: int, seed: int = HELD_OUT_SEED) -> list[tuple[str, np.ndarray, float]]:
    """``count`` held-out anatomy scenes, the sources in turn: (name, HU, pixel mm)."""
    out = []
    for i in range(count):
        source = SYNTHETIC_SOURCES[i % len(SYNTHETIC_SOURCES)]
        scene = anatomy.make_scene(source, seed + i)
        out.append((f"{source}-{seed + i}", scene.hu, scene.pixel_mm))
    return out


def simulate(slices: Sequence[tuple[str, np.ndarray, float]], noise: Sequence[float],
             seed: int, workers: int,
             lesions: float = siteeval.LESIONS_PER_AREA) -> list[siteeval.SitePair]:
    """Each slice through siteeval's chain at each noise level, ``lesions`` disks per 128^2
    px of flat soft tissue drawn in first (0: none)."""
    jobs = [(name, i, hu, pixel_mm, tuple(noise), siteeval.slice_seed(seed, 0, i), lesions)
            for i, (name, hu, pixel_mm) in enumerate(slices)]
    pairs = []
    for result in siteeval.map_jobs(siteeval.scan_slice, jobs, workers):
        if not isinstance(result, str):
            pairs += result
    return pairs


def collect(pipeline: Pipeline, pairs: Sequence[siteeval.SitePair], noise: Sequence[float],
            sampling: Sampling, echo: Callable[[str], None],
            real: bool = False) -> dict[float, Collected]:
    out = {sigma: Collected(real=real) for sigma in noise}
    for number, pair in enumerate(pairs, 1):
        out[pair.noise_hu].add(pipeline, pair, sampling)
        if number % 10 == 0:
            echo(f"maps: {number}/{len(pairs)} slices")
    return out


def timing(pipeline: Pipeline, image: np.ndarray, ensemble: int, repeats: int = 3) -> dict[str, float]:
    """Median seconds of enhance against enhance_maps (both maps) at one ensemble."""
    sampling = Sampling(ensemble=ensemble)

    def best(run: Callable[[], Any]) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return float(np.median(times))

    plain = best(lambda: pipeline.enhance(image, sampling))
    with_maps = best(lambda: pipeline.enhance_maps(image, sampling))
    return {"ensemble": ensemble, "enhance_s": round(plain, 3), "with_maps_s": round(with_maps, 3),
            "ratio": round(with_maps / plain, 3)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .site import read_scans

    parser = argparse.ArgumentParser(prog="python -m scanside.training.mapseval",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", type=Path, help="default: the built-in model")
    parser.add_argument("--synthetic", type=int, default=16, help="held-out scenes to fit on")
    parser.add_argument("--on", type=Path, nargs="*", default=[], help="real scans to measure on")
    parser.add_argument("--max-slices", type=int, default=12)
    parser.add_argument("--noise", type=float, nargs="+", default=list(siteeval.NOISE_HU))
    parser.add_argument("--calibration", type=Path,
                        help="a calibration JSON to measure with instead of fitting one")
    parser.add_argument("--out", type=Path, required=True, help="the figures, JSON")
    parser.add_argument("--write", action="store_true",
                        help="store the fitted calibration in the engine's manifest (maps."
                             "uncertainty), where enhance_maps reads it")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    echo = lambda text: print(text, flush=True)  # noqa: E731
    pipeline = Pipeline.load(args.engine)
    sampling = Sampling()
    report: dict[str, Any] = {"engine": str(args.engine or "built-in"),
                              "views": pipeline.map_views(sampling), "noise_hu": args.noise}
    synthetic = simulate(synthetic_slices(args.synthetic), args.noise, 1, args.workers)
    if args.calibration:
        calibration = json.loads(args.calibration.read_text())
    else:
        raw = Pipeline.load(args.engine)
        raw.manifest = _without_calibration(raw.manifest)
        calibration = fit_calibration(list(collect(raw, synthetic, args.noise, sampling,
                                                   echo).values()))
        calibration["measured_on"] = (f"{args.synthetic} held-out synthetic anatomy scenes "
                                      f"at {'/'.join(f'{n:g}' for n in args.noise)} HU, "
                                      f"{MIN_VIEWS} views")
    echo(f"calibration: {calibration}")
    if args.write:
        write_calibration(args.engine, calibration)
    report["calibration"] = calibration
    pipeline.manifest = _with_calibration(pipeline.manifest, calibration)
    report["synthetic"] = {f"{k:g}": summary(v) for k, v in
                           collect(pipeline, synthetic, args.noise, sampling, echo).items()}
    if args.on:
        scans = read_scans(args.on, args.max_slices, echo)
        slices = [(series.name, s.hu, s.pixel_mm) for series in scans.series for s in series.slices]
        real = simulate(slices, args.noise, 2, args.workers)
        report["real"] = {f"{k:g}": summary(v) for k, v in
                          collect(pipeline, real, args.noise, sampling, echo, True).items()}
        report["real_slices"] = len(slices)
        image = unit(real[0].low) if real else None
    else:
        image = unit(synthetic[0].low)
    big = np.pad(image, [(0, max(0, 512 - n)) for n in image.shape], mode="symmetric")[:512, :512]
    report["timing_512"] = [timing(pipeline, big, e) for e in (1, 4)]
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    echo(json.dumps({k: v for k, v in report.items() if k not in ("synthetic", "real")}, indent=1))
    for name in ("synthetic", "real"):
        for level, figures in report.get(name, {}).items():
            net = (f" ({figures['worst_ratio_net']:.2f} less the reference's own noise)"
                   if "worst_ratio_net" in figures else "")
            echo(f"{name} {level} HU: worst bin ratio {figures['worst_ratio']:.2f}{net}, lost "
                 f"{figures['lost']}/{figures['lesions_shown']}, lost flagged (any/half) "
                 f"{figures['lost_flagged_any']}/{figures['lost_flagged_half']}, flagged "
                 f"{100 * figures['flagged_share_mean']:.2f} % of the object")
    return 0


def write_calibration(engine: Optional[Path], calibration: dict[str, Any]) -> Path:
    """``calibration`` into ENGINE/manifest.json's ``maps.uncertainty``, atomically: a
    calibration belongs to the engine it was measured on (a re-export, or a model adapted
    from it, starts without one)."""
    from scanside.files import write_json
    from scanside.runtime.artifacts import MANIFEST, engine_folder
    from scanside.runtime.default import default_engine_dir

    folder = default_engine_dir() if engine is None else engine_folder(engine)
    data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    data["maps"] = {**(data.get("maps") or {}), "uncertainty": calibration}
    write_json(folder / MANIFEST, data, indent=2)  # as export writes it
    return folder / MANIFEST


def _without_calibration(manifest):
    import dataclasses

    return dataclasses.replace(manifest, maps=None)


def _with_calibration(manifest, calibration: dict[str, Any]):
    import dataclasses

    return dataclasses.replace(manifest, maps={"uncertainty": calibration})


if __name__ == "__main__":
    raise SystemExit(main())
