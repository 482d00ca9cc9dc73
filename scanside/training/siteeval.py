"""`scanside models evaluate --on SCANS`: the site's acceptance test on its own CT.

Each slice of the site's routine-dose series (``site``) is put through the project's scan
chain (``ctsim``) at its own pixel size, as the README's real-slice table does: projected once,
reconstructed at 1e7 photons per ray as the reference, and at the photon counts that give each
noise level asked for (default 20, 40 and 80 HU in soft tissue) as the low-dose inputs. Before
the scan, faint disks are drawn into the slice's flat soft tissue (radius 3-10 px, 10-40 HU of
either sign; ``--lesions`` per 128x128 px of it, 0: none): the lesion test on real
backgrounds, scored as contrast kept and lesions lost by size.

Every image is then cropped to the object (the reference's pixels above -900 HU, table
included, plus a 16 px margin): the figures describe the patient, not the air around it, and
BM3D, which dominates the time, runs on the crop alone.

Figures, against the reference, in the window [-1000, 1000] HU as everywhere in the project:
PSNR, SSIM, the HU bias over the reference's flat soft tissue (``realct.hu_bias``), lesion
contrast kept and lost by radius, and seconds per slice (not the phantoms' false-blob count:
a real reference's own noise makes hundreds per slice for every method). Methods: the
low-dose input, the engine (default: the built-in model), each ``--compare`` engine, and BM3D
when installed (the bm3d package's low-complexity profile unless ``bm3d_profile="np"``), its
sigma a factor of the image's true noise tuned per noise level on a few of the evaluated
slices themselves (an oracle, which favours BM3D). Overall and per-series tables,
JSON, and a PNG panel per noise level (input | model | BM3D | reference, soft-tissue window).
Series appear as ``s01-3fa2c18b`` (site.py), never by a patient attribute, UID or path.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from scanside.runtime.sampling import Sampling

from . import anatomy, ctsim, evaluate, realct
from .site import SiteScans, spread

NOISE_HU = realct.NOISE_HU  # soft-tissue noise of the simulated low doses (default 20/40/80)
REFERENCE_PHOTONS = 1e7  # per ray: as realct and training
LESION_RADIUS_PX = (3.0, 10.0)
LESION_CONTRAST_HU = (10.0, 40.0)
LESIONS_PER_AREA = 4.0  # per 128 x 128 px of flat soft tissue (anatomy.LESION_AREA): on real
# slices 1-2 disks of up to 10 px find room (measured on realct-dev), so ask for several
LESION_SMOOTH_PX = 2.0  # flatness judged through the slice's own noise (anatomy.draw_lesions)
SIZE_BINS = ((3.0, 5.0), (5.0, 7.5), (7.5, 10.0))  # radius bands, px, for contrast by size
OBJECT_HU = -900.0  # above this is the object (patient, table)
MARGIN_PX = 16
PANEL_WINDOW = (40.0, 400.0)  # soft tissue: centre, width
BM3D_TUNE_SLICES = 2  # slices per noise level BM3D's factor is tuned on
# Its factors: evaluate.BM3D_GRID less 1.0, which never won on real CT (2.0-2.5 do, at 20-80
# HU; evaluate.BM3D_GRID's comment): BM3D is most of the evaluation's time.
BM3D_GRID = (1.5, 2.0, 2.5, 3.0, 3.5)
# The bm3d package's low-complexity profile: 0.03-0.07 dB under its normal one on real CT at
# 2.9x the speed (evaluate.BM3D_PROFILES); with the paired Radon projection (ctsim.radon) it
# brings 50 slices x 3 levels from 25 to 10 min on 2 cores (BM3D's part from 17 to 5);
# bm3d_profile="np" (--bm3d-profile np) for the normal profile.
BM3D_PROFILE = "lc"
METHOD_INPUT = "low-dose input"


@dataclass(frozen=True)
class SitePair:
    """One slice at one noise level; ``phantom`` is the slice with its lesions before the
    scan (what ``evaluate.Scores`` measures contrast against)."""

    series: str
    position: int
    noise_hu: float
    measured_hu: float
    low: np.ndarray
    full: np.ndarray
    phantom: ctsim.Phantom
    pixel_mm: float


def object_box(reference: np.ndarray, margin: int = MARGIN_PX) -> tuple[slice, slice]:
    """The rows and columns holding the object (above OBJECT_HU), grown by ``margin``."""
    rows, cols = np.nonzero(reference > OBJECT_HU)
    if not len(rows):
        return slice(0, reference.shape[0]), slice(0, reference.shape[1])
    return (slice(max(0, rows.min() - margin), min(reference.shape[0], rows.max() + margin + 1)),
            slice(max(0, cols.min() - margin), min(reference.shape[1], cols.max() + margin + 1)))


def scan_slice(job: tuple) -> "list[SitePair] | str":
    """One slice through the chain at every noise level, cropped to the object; a string
    (the reason) when the slice has no tissue to measure noise in."""
    series, position, hu, pixel_mm, noise, seed, lesions = job
    rng = np.random.default_rng(seed)
    truth, drawn = (anatomy.draw_lesions(hu, rng, lesions, LESION_RADIUS_PX, LESION_CONTRAST_HU,
                                         LESION_SMOOTH_PX) if lesions else (hu, ()))
    square = ctsim.square(truth)
    dy, dx = (square.shape[0] - hu.shape[0]) // 2, (square.shape[1] - hu.shape[1]) // 2
    proj = ctsim.project(square, pixel_mm / 10)
    full = ctsim.reconstruct(proj, REFERENCE_PHOTONS, int(rng.integers(2**31)))
    pilot = ctsim.pilot_noise(proj, full, int(rng.integers(2**31)))
    if not np.isfinite(pilot) or pilot <= 0:
        return "no tissue to measure noise in (a slice of air, or of bone and lung only)"
    lows = [ctsim.reconstruct(proj, ctsim.photons_for(ctsim.PILOT, pilot, sigma),
                              int(rng.integers(2**31))) for sigma in noise]
    inner = (slice(dy, dy + hu.shape[0]), slice(dx, dx + hu.shape[1]))
    full, lows = full[inner], [low[inner] for low in lows]
    rows, cols = object_box(full)
    moved = tuple(ctsim.Lesion(les.y - rows.start, les.x - cols.start, les.radius,
                               les.contrast_hu) for les in drawn)
    phantom = ctsim.Phantom(truth[rows, cols].astype(np.float32), moved)
    full = full[rows, cols]
    return [SitePair(series, position, float(sigma), ctsim.noise_hu(low[rows, cols], full),
                     low[rows, cols], full, phantom, pixel_mm)
            for sigma, low in zip(noise, lows)]


def slice_seed(seed: int, series: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, series, position]).generate_state(1)[0])


def simulate(scans: SiteScans, noise: Sequence[float], *, seed: int = 0,
             lesions: float = LESIONS_PER_AREA, workers: int = 2,
             echo: Callable[[str], None] = print) -> tuple[list[SitePair], list[dict]]:
    """Every slice of ``scans`` at every noise level (``workers`` processes); the slices
    left out here, with the reason."""
    jobs = [(series.name, s.position, s.hu, s.pixel_mm, tuple(noise),
             slice_seed(seed, series.index, s.position), lesions)
            for series in scans.series for s in series.slices]
    echo(f"simulating {len(jobs)} slice(s) at {'/'.join(f'{n:g}' for n in noise)} HU "
         f"({workers} process(es)) ...")
    results = map_jobs(scan_slice, jobs, workers)
    pairs, skipped = [], []
    for job, result in zip(jobs, results):
        if isinstance(result, str):
            skipped.append({"series": job[0], "slice": job[1], "reason": result})
            echo(f"left out: {job[0]} slice {job[1]}: {result}")
        else:
            pairs += result
    return pairs, skipped


def map_jobs(function: Callable, jobs: list, workers: int) -> list:
    """``function`` over ``jobs`` in order, in ``workers`` spawned processes when more than one."""
    if workers <= 1 or len(jobs) < 2:
        return [function(job) for job in jobs]
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        return pool.map(function, jobs, chunksize=1)


# -- BM3D ---------------------------------------------------------------------------------
def bm3d_psnr(job: tuple) -> float:
    low, full, factor, profile = job
    return evaluate.psnr(full, evaluate.bm3d_filter(low, factor, evaluate.oracle_noise(low, full),
                                                    profile))


def tune_bm3d(pairs: Sequence[SitePair], noise: Sequence[float],
              grid: Sequence[float] = BM3D_GRID, profile: str = BM3D_PROFILE,
              echo: Callable[[str], None] = print) -> evaluate.TunedBM3D:
    """BM3D's factor per noise level, the best mean PSNR over BM3D_TUNE_SLICES slices spread
    over the evaluated ones (an oracle: the same data it is scored on)."""
    factors = []
    for sigma in noise:
        level = [p for p in pairs if p.noise_hu == sigma]
        picks = [level[i] for i in spread(len(level), BM3D_TUNE_SLICES)]
        scores = [np.mean([bm3d_psnr((p.low, p.full, c, profile)) for p in picks]) for c in grid]
        best = int(np.argmax(scores))
        if best == len(grid) - 1:
            echo(f"BM3D: best factor at {sigma:g} HU is the grid's largest ({grid[-1]:g})")
        measured = round(float(np.mean([p.measured_hu for p in level])), 1)
        factors.append((measured, float(grid[best])))
    return evaluate.TunedBM3D(tuple(sorted(factors)), profile)


# -- the evaluation -----------------------------------------------------------------------
def engine_label(engine_dir: Optional[Path], taken: set[str]) -> str:
    """"built-in", or the engine folder's name (its model folder's, for MODEL_DIR/engine)."""
    path = None if engine_dir is None else Path(engine_dir).resolve()
    name = "built-in" if path is None else path.parent.name if path.name == "engine" else path.name
    while name in taken:
        name += "'"
    return name


def evaluate_site(scans: SiteScans, engine_dir: Optional[Path] = None, *,
                  compare: Sequence[Path] = (), noise: Sequence[float] = NOISE_HU,
                  lesions: float = LESIONS_PER_AREA, bm3d: bool = True,
                  bm3d_profile: str = BM3D_PROFILE,
                  sampling: Optional[Sampling] = None, seed: int = 0, workers: int = 2,
                  echo: Callable[[str], None] = print, panels: Optional[Path] = None,
                  labels: Sequence[str] = ()) -> dict[str, Any]:
    """The figures (see the module docstring) as a JSON-ready dict; ``bm3d_profile``: the
    bm3d package's profile (evaluate.BM3D_PROFILES); ``panels``: a folder for the PNG panels
    (written atomically, one per noise level); ``labels``: names for the engine and the
    compared ones, in order (default: "built-in" or the folder's name)."""
    sampling = Sampling.of(sampling)
    evaluate.check_bm3d_profile(bm3d_profile)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    pairs, skipped = simulate(scans, noise, seed=seed, lesions=lesions, workers=workers, echo=echo)
    seconds["simulate"] = time.perf_counter() - started
    if not pairs:
        from scanside.errors import InputError

        raise InputError("evaluate --on: no slice had tissue to measure noise in")
    methods: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        METHOD_INPUT: lambda hu, ref: hu}
    engines: dict[str, dict[str, Any]] = {}
    for k, directory in enumerate([engine_dir, *compare]):
        name = labels[k] if k < len(labels) else engine_label(directory, set(methods))
        pipe, enhance = evaluate.model_enhancer(directory, sampling)
        enhance(pairs[0].low)  # warm-up: the first run allocates ONNX Runtime's arena
        methods[name] = lambda hu, ref, enhance=enhance: enhance(hu)
        m = pipe.manifest
        engines[name] = {"model_hash": m.source_hash[:16], "precision": m.precision.value,
                         "sampling": pipe.sampling_defaults(**sampling.given())}
    model = next(iter(engines))
    factors = None
    if bm3d and evaluate.have_bm3d():
        echo(f"BM3D (profile {bm3d_profile}): tuning its factor per noise level on "
             f"{BM3D_TUNE_SLICES} of the slices ...")
        tick = time.perf_counter()
        tuned = tune_bm3d(pairs, noise, profile=bm3d_profile, echo=echo)
        seconds["bm3d tuning"] = time.perf_counter() - tick
        echo(f"BM3D tuned: {evaluate.factors_text(tuned)}")
        methods["bm3d"] = tuned
        factors = tuned.factors
    elif bm3d:
        echo("BM3D: not installed (pip install bm3d; non-commercial licence), left out")
    panel_slice = choose_panel_slice(pairs)
    # Per series; the overall row combines them (each output is scored once).
    scores = {(name, sigma, key): evaluate.Scores(
        bins=SIZE_BINS, bias_without_lesions=True, count_blobs=False,
        flat_smooth_px=LESION_SMOOTH_PX)
              for name in methods for sigma in noise for key in series_names(pairs)}
    shown: dict[float, dict[str, np.ndarray]] = {}
    for i, pair in enumerate(pairs):
        for name, method in methods.items():
            tick = time.perf_counter()
            out = method(pair.low, pair.full)
            spent = time.perf_counter() - tick
            seconds[name] = seconds.get(name, 0.0) + spent
            scores[(name, pair.noise_hu, pair.series)].add(out, pair)
            scores[(name, pair.noise_hu, pair.series)].seconds.append(spent)
            if (pair.series, pair.position) == panel_slice:
                shown.setdefault(pair.noise_hu, {"reference": pair.full})[name] = out
        if (i + 1) % (10 * len(noise)) == 0:
            echo(f"  {(i + 1) // len(noise)}/{len(pairs) // len(noise)} slices")
    seconds["total"] = time.perf_counter() - started
    for name in methods:
        for sigma in noise:
            scores[(name, sigma, "all")] = evaluate.Scores.combined(
                [scores[(name, sigma, key)] for key in series_names(pairs)])
    result = {
        "data": scans.summary(), "noise_hu": list(noise), "model": model, "engines": engines,
        "lesions": {"per_128px_flat_tissue": lesions, "radius_px": list(LESION_RADIUS_PX),
                    "contrast_hu": list(LESION_CONTRAST_HU), "size_bins_px": [list(b) for b in SIZE_BINS]},
        "bm3d_factors": factors, "bm3d_profile": bm3d_profile if factors else None,
        "window_hu": list(evaluate.WINDOW),
        "region": f"each slice cropped to the object (> {OBJECT_HU:g} HU) + {MARGIN_PX} px",
        "reference": "the slice as its scanner made it, through the chain at 1e7 photons: its "
                     "own noise is kept, so PSNR measures how much of the added dose noise a "
                     "method removes (a model that keeps the scanner's texture is favoured)",
        "overall": [level_row(scores, methods, pairs, sigma, "all") for sigma in noise],
        "series": [level_row(scores, methods, pairs, sigma, name)
                   for name in series_names(pairs) for sigma in noise],
        "left_out": [{"argument": item.argument, "reason": item.reason} for item in scans.left_out]
                    + skipped,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "seconds_per_slice": {name: round(seconds[name] / len(pairs), 3) for name in methods
                              if name in seconds},
    }
    if panels is not None:
        result["panels"] = write_panels(panels, shown, list(engines))
    return result


def series_names(pairs: Sequence[SitePair]) -> list[str]:
    return list(dict.fromkeys(p.series for p in pairs))


def level_row(scores: dict, methods: dict, pairs: Sequence[SitePair], sigma: float,
              key: str) -> dict[str, Any]:
    level = [p for p in pairs if p.noise_hu == sigma and key in ("all", p.series)]
    return {"series": key, "noise_hu": sigma, "slices": len(level),
            "measured_noise_hu": round(float(np.mean([p.measured_hu for p in level])), 1),
            "methods": {name: scores[(name, sigma, key)].summary() for name in methods}}


def choose_panel_slice(pairs: Sequence[SitePair]) -> tuple[str, int]:
    """The slice with the most flat soft tissue: where a reader judges noise and texture."""
    first = pairs[0].noise_hu
    best = max((p for p in pairs if p.noise_hu == first),
               key=lambda p: int(realct.flat_regions(p.full).sum()))
    return best.series, best.position


def write_panels(folder: Path, shown: dict[float, dict[str, np.ndarray]],
                 models: Sequence[str]) -> list[str]:
    """input | each model | BM3D | reference at the soft-tissue window, one PNG per noise
    level, each tile labelled."""
    from PIL import Image, ImageDraw

    from scanside.files import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    centre, width = PANEL_WINDOW
    names = []
    for sigma, images in shown.items():
        order = [n for n in (METHOD_INPUT, *models, "bm3d", "reference") if n in images]
        tiles = [np.clip((images[n] - (centre - width / 2)) / width * 255, 0, 255).astype(np.uint8)
                 for n in order]
        strip = Image.fromarray(np.concatenate(tiles, axis=1))
        draw = ImageDraw.Draw(strip)
        w = tiles[0].shape[1]
        for k, n in enumerate(order):
            draw.text((k * w + 4, 4), n if n != METHOD_INPUT else f"input {sigma:g} HU", fill=255)
        name = f"panel-{sigma:g}hu.png"
        with atomic_path(folder / name, overwrite=True) as tmp:
            strip.save(tmp, format="PNG")
        names.append(name)
    return names


def table(result: dict[str, Any]) -> str:
    """The overall table per noise level, lesions by size, the per-series PSNR, the times."""
    data = result["data"]
    lines = [f"{data['slices']} slice(s) of {data['series']} series "
             f"({', '.join(data['scanner_models'] or ['scanner model not given'])}; kernels "
             f"{', '.join(data['kernels'] or ['-'])}; pixels {data['pixel_mm']} mm); "
             f"window {result['window_hu']} HU; {result['region']}",
             f"reference: {result['reference']}"]
    percent = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    width = max(16, *(len(n) + 2 for n in result["overall"][0]["methods"]))
    for row in result["overall"]:
        lines.append(f"\nadded noise {row['noise_hu']:g} HU (measured {row['measured_noise_hu']:g}; "
                     f"the scanner's own comes on top), {row['slices']} slice(s)")
        lines.append(f"{'method':<{width}}{'PSNR dB':>9}{'SSIM':>8}{'HU bias':>9}{'max|b|':>8}"
                     f"{'lesions lost':>14}{'s/crop':>8}")
        for name, s in row["methods"].items():
            lines.append(f"{name:<{width}}{s['psnr_db']:>9.2f}{s['ssim']:>8.4f}"
                         f"{s.get('hu_bias_mean', float('nan')):>+9.2f}"
                         f"{s.get('hu_bias_max_abs', float('nan')):>8.2f}"
                         f"{lost_text(s):>14}"
                         f"{s.get('seconds_median', 0):>8.3f}")
        bands = next(iter(row["methods"].values())).get("lesion_contrast_by_radius") or []
        if bands and any(b["lesions"] for b in bands):
            lines.append("  contrast kept (median) and lost, by radius: " + " | ".join(
                f"{b['radius_px'][0]:g}-{b['radius_px'][1]:g} px ({b['lesions']})" for b in bands))
            for name, s in row["methods"].items():
                lines.append(f"  {name:<{width}}" + " | ".join(
                    "-" if b["median_kept"] is None else f"{b['median_kept']:.2f} {percent(b['lost'])}"
                    for b in s["lesion_contrast_by_radius"]))
    names = list(result["overall"][0]["methods"])
    lines.append("\nper series, PSNR dB: " + " | ".join(names))
    for row in result["series"]:
        lines.append(f"  {row['series']:<12}{row['noise_hu']:>4g} HU ({row['slices']:>3})  "
                     + "  ".join(f"{row['methods'][n]['psnr_db']:>7.2f}" for n in names))
    if result.get("bm3d_factors"):
        lines.append(f"BM3D (profile {result.get('bm3d_profile') or 'np'}) sigma: " + ", ".join(
            f"{f:g} x noise at {n:g} HU" for n, f in result["bm3d_factors"]))
        close = close_to_bm3d(result)
        if close:
            lines.append(f"within {CLOSE_DB:g} dB of BM3D: {', '.join(close)}; its lc profile "
                         "runs 0.03-0.07 dB under its normal one: run again with "
                         "--bm3d-profile np before deciding on this")
    lines.append("seconds: " + ", ".join(f"{k} {v:g}" for k, v in result["seconds"].items()))
    if result["left_out"]:
        counts: dict[str, int] = {}
        for item in result["left_out"]:
            counts[item["reason"]] = counts.get(item["reason"], 0) + 1
        lines.append("left out: " + "; ".join(f"{n} x {r}" for r, n in counts.items()))
    return "\n".join(lines)


CLOSE_DB = 0.1  # a model this near BM3D (lc) may be on the other side of BM3D (np)


def close_to_bm3d(result: dict[str, Any]) -> list[str]:
    """"NAME at N HU" for each model within CLOSE_DB of BM3D's low-complexity profile."""
    if result.get("bm3d_profile") != "lc":
        return []
    return [f"{name} at {row['noise_hu']:g} HU" for row in result["overall"]
            for name, s in row["methods"].items()
            if name not in (METHOD_INPUT, "bm3d") and "bm3d" in row["methods"]
            and abs(s["psnr_db"] - row["methods"]["bm3d"]["psnr_db"]) < CLOSE_DB]


def lost_text(summary: dict[str, Any]) -> str:
    lost, shown = summary.get("lesions_lost"), summary.get("lesions_shown")
    return "-" if lost is None else f"{100 * lost:.0f}% of {shown}"


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_report(result: dict[str, Any], folder: Path) -> None:
    """evaluation.json and evaluation.txt in ``folder`` (the panels are already there)."""
    from scanside.files import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    for name, body in (("evaluation.json", json.dumps(finite(result), indent=2) + "\n"),
                       ("evaluation.txt", table(result) + "\n")):
        with atomic_path(folder / name, overwrite=True) as tmp:
            Path(tmp).write_text(body, encoding="utf-8")
