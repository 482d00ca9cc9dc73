"""Real anatomy through the scan chain: the default model on real CT slices, never trained on.

A real slice (pydicom's ``CT_small.dcm``, a 128 px neck at 0.66 mm; ``693_J2KI.dcm``, a 512 px
head at 0.48 mm) is read in HU, clipped to [-1000, 3000], projected at the file's own pixel
spacing and reconstructed by ctsim's chain: a reference at 1e7 photons per ray and low doses at
the counts that give 20, 40 and 80 HU of noise in soft tissue. The slice is already a
reconstruction with its own noise, so the reference carries that noise too; what is scored is
how much of the *added* dose noise a method removes, and whether it moves HU.

Scores, against the reference, in the window [-1000, 1000] HU (range 2000), as on the
phantoms: PSNR; and the HU bias, the mean of (output - reference) over the reference's flat
soft tissue (``flat_regions``), where any shift a reader would see as a density change shows.
Each (slice, noise level) is scanned ``repeats`` times with independent noise and the figures
averaged: on a small slice the flat regions are a few hundred correlated pixels, and one
noise draw alone moves the *input's* mean there by several HU (CT_small at 40 HU: +7.8), which
would hide a model's systematic shift or invent one.

These files are validation and test data only, never training data (the model trains on
``anatomy``'s sources).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from . import ctsim

SLICES = ("CT_small.dcm", "693_J2KI.dcm")
NOISE_HU = (20.0, 40.0, 80.0)
CLIP_HU = (-1000.0, 3000.0)
FLAT_STD_HU = 12.0  # local std of the reference below this: a flat region


@dataclass(frozen=True)
class RealPair:
    name: str
    noise_hu: float  # the soft-tissue noise asked for (measured: ``measured_hu``)
    measured_hu: float
    repeat: int  # which independent noise draw
    low: np.ndarray  # HU
    full: np.ndarray  # HU, the reference
    pixel_mm: float


def read_slice(name: str) -> tuple[np.ndarray, float]:
    """One of pydicom's test CT files in HU (modality LUT applied) and its pixel size, mm."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(get_testdata_file(name))
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    return np.clip(hu, *CLIP_HU), float(ds.PixelSpacing[0])


def scan_pairs(name: str, hu: np.ndarray, pixel_mm: float, noise, repeats: int,
               seed: int) -> list[RealPair]:
    """One slice (HU) through the scan chain at every noise level, ``repeats`` draws each."""
    hu = ctsim.square(hu)
    proj = ctsim.project(hu, pixel_mm / 10)
    full = ctsim.reconstruct(proj, 1e7, seed)
    pairs = []
    for j, sigma in enumerate(noise):
        for r in range(repeats):
            low, _ = ctsim.scan_at_noise(proj, full, sigma, seed + 100 * j + 2 * r + 1)
            pairs.append(RealPair(name, sigma, ctsim.noise_hu(low, full), r, low, full, pixel_mm))
    return pairs


# Noise draws per slice for the evaluation's figures. A bias is a mean over a slice's flat
# regions, so its draw-to-draw spread depends on how many pixels they have: CT_small's 220
# flat pixels give 1.7-3.2 HU of spread per draw (20-80 HU of noise; 16 draws of the shipped
# model), so 3 draws would leave +-1-2 HU of noise on a 3 HU bound; 693_J2KI's 36,000 give
# 0.06-0.17 HU, and each of its 512 px draws costs 16x the time.
REAL_DRAWS = {"CT_small.dcm": 16, "693_J2KI.dcm": 3}


def real_pairs(names=SLICES, noise=NOISE_HU, repeats: "int | Mapping[str, int]" = 1,
               seed: int = 0) -> list[RealPair]:
    """Every slice at every noise level, ``repeats`` noise draws each (or per slice name);
    deterministic."""
    pairs = []
    for k, name in enumerate(names):
        hu, pixel_mm = read_slice(name)
        draws = repeats if isinstance(repeats, int) else repeats[name]
        pairs += scan_pairs(name, hu, pixel_mm, noise, draws, seed + 1000 * k)
    return pairs


# Synthetic anatomy for validation: scenes of the training sources at seeds training never
# draws (it uses 0..count-1 per source), so choices (which run ships, settings) are made on
# them and the real slices stay a test. Heads are other levels and tissue values of the one
# Colin27 head, chests other sizes, turns and values of XCIST's two: new scenes, not new
# people, which is why the real slices remain the measure of generalisation.
VALIDATION_SEED = 900_000
VALIDATION_SCENES = (("head", 3), ("chest", 2), ("natural", 2))


def validation_pairs(scenes=VALIDATION_SCENES, noise=NOISE_HU, repeats: int = 1,
                     seed: int = 0) -> list[RealPair]:
    """Held-out scenes of the training anatomy through the same chain; named SOURCE#SEED."""
    from . import anatomy

    pairs = []
    for source, count in scenes:
        for i in range(count):
            scene = anatomy.make_scene(source, VALIDATION_SEED + i)
            name = f"{source}#{VALIDATION_SEED + i}"
            pairs += scan_pairs(name, scene.hu, scene.pixel_mm, noise, repeats,
                                seed + VALIDATION_SEED + 1000 * i + 17 * len(pairs))
    return pairs


def flat_regions(reference: np.ndarray, smooth_px: float = 0.0) -> np.ndarray:
    """Bool mask: soft tissue (-150..150 HU) whose 9x9 neighbourhood in the reference varies
    by under FLAT_STD_HU, eroded by 2 px: where a mean HU is defined and a shift is a bias.
    ``smooth_px``: judge the variation on the reference smoothed by a Gaussian of this sigma,
    for references with noise of their own (a real scan's 10-20 HU)."""
    from scipy import ndimage

    ref = reference.astype(np.float64)
    if smooth_px:
        ref = ndimage.gaussian_filter(ref, smooth_px)
    mean = ndimage.uniform_filter(ref, 9)
    std = np.sqrt(np.maximum(ndimage.uniform_filter(ref**2, 9) - mean**2, 0))
    flat = (ref > -150) & (ref < 150) & (std < FLAT_STD_HU)
    return ndimage.binary_erosion(flat, iterations=2)


def hu_bias(output: np.ndarray, reference: np.ndarray,
            exclude: "np.ndarray | None" = None, smooth_px: float = 0.0) -> float:
    """Mean (output - reference) over the reference's flat regions (less ``exclude``; see
    ``flat_regions`` for ``smooth_px``), HU."""
    mask = flat_regions(reference, smooth_px)
    if exclude is not None:
        mask &= ~exclude
    return float((output - reference)[mask].mean()) if mask.any() else float("nan")


def score(methods: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]],
          pairs: list[RealPair], psnr: Callable[[np.ndarray, np.ndarray], float]) -> list[dict]:
    """One row per (slice, noise level): PSNR and HU bias of every method (called with the
    low-dose image and its reference, as on the phantoms), each the mean over that row's
    noise draws, and the bias's standard error over them (NaN with one draw): what tells a
    bias of the method from the noise of the draws."""
    groups: dict[tuple[str, float], list[RealPair]] = {}
    for pair in pairs:
        groups.setdefault((pair.name, pair.noise_hu), []).append(pair)
    rows = []
    for (name, sigma), draws in groups.items():
        row = {"slice": name, "noise_hu": sigma, "draws": len(draws),
               "measured_noise_hu": round(float(np.mean([p.measured_hu for p in draws])), 1),
               "methods": {}}
        for label, method in methods.items():
            outs = [method(p.low, p.full) for p in draws]
            bias = np.array([hu_bias(o, p.full) for p, o in zip(draws, outs)])
            row["methods"][label] = {
                "psnr_db": float(np.mean([psnr(p.full, o) for p, o in zip(draws, outs)])),
                "hu_bias": float(bias.mean()),
                "hu_bias_se": float(bias.std(ddof=1) / np.sqrt(len(bias)))
                if len(bias) > 1 else float("nan")}
        rows.append(row)
    return rows


def bias_se(method: dict) -> str:
    se = method.get("hu_bias_se", float("nan"))
    return "" if not np.isfinite(se) else f"±{se:.1f}"


def table(rows: list[dict], title: str = "real anatomy") -> str:
    names = list(rows[0]["methods"])
    head = f"{'slice':<14}{'noise':>7}" + "".join(f"{n[:22]:>24}" for n in names)
    lines = [f"{title}: PSNR dB (HU bias on flat regions +- its standard error over the draws)",
             head]
    for r in rows:
        cells = "".join(f"{m['psnr_db']:.2f} ({m['hu_bias']:+.1f}{bias_se(m)})".rjust(24)
                        for m in r["methods"].values())
        lines.append(f"{r['slice']:<14}{r['noise_hu']:>4.0f} HU{cells}")
    return "\n".join(lines)
