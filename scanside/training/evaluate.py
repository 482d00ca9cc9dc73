"""``scanside models evaluate``: the default model's figures on the held-out synthetic CT set.

Everything is measured in Hounsfield units inside the window [-1000, 1000] HU (data range
2000, stated explicitly to scikit-image: its default range for float images is [-1, 1] and
would inflate SSIM), against the full-dose reconstruction of the same phantom:

- PSNR and SSIM of the low-dose input, the model, a Gaussian filter whose sigma is tuned on the
  validation split, and scikit-image's non-local means with its strength tuned the same way;
- lesion contrast (mean inside the lesion minus the ring around it) vs the reference's, as a
  relative error per lesion. Its mean is taken over the lesions the reference shows (at least
  half their designed contrast, see ``SHOWN``): the full-dose reconstruction blurs the
  smallest lesions and the tissue texture adds to or cancels others, and a lesion whose
  reference contrast is near 0 HU makes any relative error unbounded. The mean over all
  lesions and the pooled error (sum of |contrast error| over sum of |reference contrast|) are
  reported beside it;
- lost lesions (output contrast below half the reference's, or of the other sign; among the
  lesions the reference shows) and false lesion-like blobs (see ``false_blobs``);
- contrast kept by lesion size (``SIZE_BINS``): the median of output over reference contrast
  and the share lost, per radius band. A denoiser that keeps high-contrast edges can still
  act as a low-pass filter on faint structure, attenuating small disks more than large ones
  (a task-based resolution, as CT's contrast-dependent MTF); one mean hides that;
- the low-dose data's own limit on lesion contrast (``lesion_floor``): how well an oracle that
  knows every lesion's position, radius and true background, and the distribution of lesion
  contrasts, could measure contrast from the low-dose image. No method is expected below it;
- wall time of one enhancement through the engine, after a warm-up;
- BM3D (the ``bm3d`` package, when installed: a measurement peer under Tampere University's
  non-commercial licence, never a runtime dependency), given the image's true noise level
  (measured against the reference: an oracle, which favours it) times a factor tuned on
  validation at every noise level (``TunedBM3D``): the phantoms' factors on the phantoms'
  validation split at each dose, the real and held-out anatomy's on the held-out anatomy;
- the same phantoms at 1/4x to 4x the nominal dose (PSNR of the input, BM3D and the model);
- real anatomy (``realct``): pydicom's two real CT slices through the scan chain at 20, 40 and
  80 HU of noise, with the HU bias over flat regions.

The same command measures fp32, fp16 and int8 engines of one model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from scanside.dicom.window import Window
from scanside.errors import InputError
from scanside.runtime.sampling import Sampling

from . import ctsim, realct

WINDOW = (-1000.0, 1000.0)
DATA_RANGE = WINDOW[1] - WINDOW[0]
BLOB_RADIUS = 3  # px: the matched filter is a disk this size minus the ring around it
RING = (5, 8)  # px: inner and outer radius of the ring the contrast is measured against
BLOB_HU = 10.0  # a blob: matched-filter response of at least this (the weakest lesion is 15 HU)
VAL_PAIRS = 16
TISSUE_HU = 30.0  # ring pixels within this of the lesion's background count as its tissue
SHOWN = 0.5  # the reference shows a lesion: at least this share of its designed contrast
# Lesion radius bands (px) for the contrast kept by size: ctsim's radius range in thirds.
_EDGES = np.linspace(*ctsim.LESION_RADIUS, 4).round(2).tolist()
SIZE_BINS = tuple(zip(_EDGES[:-1], _EDGES[1:]))
Method = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (low dose, reference) -> output


def windowed(hu: np.ndarray) -> np.ndarray:
    return np.clip(hu, *WINDOW).astype(np.float64)


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """10 log10(data_range^2 / MSE) in the window: scikit-image's formula, written out so the
    demo can report it on the base install."""
    mse = float(np.mean((windowed(image) - windowed(reference)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(DATA_RANGE**2 / mse))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(windowed(reference), windowed(image),
                                       data_range=DATA_RANGE))


# -- lesions ------------------------------------------------------------------------------
def disk(radius: float, outer: Optional[float] = None) -> np.ndarray:
    r = int(np.ceil(outer or radius))
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    d = np.hypot(y, x)
    return (d <= radius) if outer is None else ((d >= radius) & (d <= outer))


def region_contrast(image: np.ndarray, lesion: ctsim.Lesion,
                    phantom: Optional[np.ndarray] = None) -> float:
    """Mean HU inside the lesion minus the mean of its surroundings: the ring 2-5 px outside
    it, restricted (given the noiseless ``phantom``) to the tissue the lesion sits in, so that
    a neighbouring organ, bone or lung does not count as contrast."""
    y, x = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    d = np.hypot(y - lesion.y, x - lesion.x)
    inside = d <= lesion.radius
    ring = (d >= lesion.radius + 2) & (d <= lesion.radius + 5)
    if phantom is not None:
        background = float(np.median(phantom[inside])) - lesion.contrast_hu
        same_tissue = ring & (np.abs(phantom - background) < TISSUE_HU)
        if same_tissue.sum() >= 10:
            ring = same_tissue
    return float(image[inside].mean() - image[ring].mean())


def reference_shows(c_ref, designed):
    """Whether the reference shows a lesion: at least SHOWN of its designed contrast, with its
    sign (scalars or arrays)."""
    return c_ref * np.sign(designed) >= SHOWN * np.abs(designed)


def matched_filter(image: np.ndarray) -> np.ndarray:
    """Disk mean minus ring mean at every pixel: a lesion-shaped blob detector, in HU."""
    from scipy.ndimage import correlate

    inner, ring = disk(BLOB_RADIUS), disk(RING[0], RING[1])
    pad = RING[1] - BLOB_RADIUS
    inner = np.pad(inner, pad).astype(np.float64)
    return (correlate(image, inner / inner.sum(), mode="nearest")
            - correlate(image, ring / ring.sum(), mode="nearest"))


def false_blobs(image: np.ndarray, reference: np.ndarray, lesions: Sequence[ctsim.Lesion]) -> int:
    """Lesion-like blobs in ``image`` where the reference has none: connected regions of soft
    tissue (reference in [-200, 200] HU, the whole filter footprint inside it) whose
    matched-filter response is at least BLOB_HU while the reference's is under half that,
    and which lie away from every true lesion."""
    from scipy.ndimage import binary_erosion, label

    tissue = binary_erosion((reference > -200) & (reference < 200), disk(RING[1]))
    response, truth = matched_filter(image), matched_filter(reference)
    candidate = tissue & (np.abs(response) >= BLOB_HU) & (np.abs(truth) < BLOB_HU / 2)
    labels, count = label(candidate)
    y, x = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    near = np.zeros(image.shape, bool)
    for lesion in lesions:
        near |= np.hypot(y - lesion.y, x - lesion.x) <= lesion.radius + RING[1]
    return sum(1 for i in range(1, count + 1) if not (near & (labels == i)).any())


def lesion_floor(pairs: Sequence[ctsim.Pair]) -> dict[str, Any]:
    """Mean relative contrast error, over the lesions the reference shows, of two oracles that
    read the low-dose image knowing each lesion's disk and the reference's background level:

    - ``measured``: the low-dose disk mean minus the background, so only the noise inside
      the disk errs (the noise of a mean over 20-80 correlated pixels);
    - ``bayes``: that measurement combined with the distribution of the *other* lesions'
      reference contrasts (leave-one-out prior), Gaussian measurement noise of std a / radius
      fitted to the errors, estimate = the posterior's 1/|c|-weighted median, which is the
      estimate with the least expected relative error.

    A denoiser knows neither position nor radius, so these are lower bounds in practice."""
    ref, meas, radius = [], [], []
    for pair in pairs:
        y, x = np.mgrid[0 : pair.low.shape[0], 0 : pair.low.shape[1]]
        for lesion in pair.phantom.lesions:
            c_ref = region_contrast(pair.full, lesion, pair.phantom.hu)
            if not reference_shows(c_ref, lesion.contrast_hu):
                continue
            inside = np.hypot(y - lesion.y, x - lesion.x) <= lesion.radius
            ref.append(c_ref)
            meas.append(c_ref + float(pair.low[inside].mean() - pair.full[inside].mean()))
            radius.append(lesion.radius)
    if len(ref) < 2:
        return {"measured": None, "bayes": None, "lesions": len(ref)}
    ref, meas, radius = np.array(ref), np.array(meas), np.array(radius)
    sigma = np.maximum(np.sqrt(np.mean(((meas - ref) * radius) ** 2)) / radius, 1e-3)
    bayes = np.empty_like(ref)
    for i in range(len(ref)):
        prior = np.sort(np.delete(ref, i))
        log_weight = -0.5 * ((meas[i] - prior) / sigma[i]) ** 2 - np.log(np.abs(prior))
        cumulative = np.cumsum(np.exp(log_weight - log_weight.max()))  # no underflow to 0
        bayes[i] = prior[min(np.searchsorted(cumulative, cumulative[-1] / 2), len(prior) - 1)]
    relative = lambda estimate: float(np.mean(np.abs(estimate - ref) / np.abs(ref)))  # noqa: E731
    return {"measured": relative(meas), "bayes": relative(bayes), "lesions": len(ref)}


# -- methods ------------------------------------------------------------------------------
@dataclass
class Scores:
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    # Per lesion: (reference contrast, output contrast, designed contrast) HU, radius px.
    contrasts: list[tuple[float, float, float, float]] = field(default_factory=list)
    blobs: int = 0
    images: int = 0
    seconds: list[float] = field(default_factory=list)
    bias: list[float] = field(default_factory=list)  # HU, per image (realct.hu_bias)
    bins: tuple[tuple[float, float], ...] = SIZE_BINS  # radius bands (px) of contrast by size
    # Leave the lesions and their rings out of the HU bias's flat regions: on real
    # backgrounds a faint disk passes the flatness test, and a contrast lost would read as
    # a density shift (the site evaluation; the phantoms' figures keep their definition).
    bias_without_lesions: bool = False
    flat_smooth_px: float = 0.0  # realct.flat_regions: >0 for references with their own noise
    # False lesion-like blobs need a clean reference: a real scan's own noise (the site
    # evaluation's references) makes hundreds per slice, for every method alike.
    count_blobs: bool = True

    def add(self, output: np.ndarray, pair: ctsim.Pair) -> None:
        ref = pair.full
        self.psnr.append(psnr(ref, output))
        self.ssim.append(ssim(ref, output))
        exclude = (ctsim.lesion_mask(pair.phantom, ctsim.LESION_MARGIN)
                   if self.bias_without_lesions and pair.phantom.lesions else None)
        self.bias.append(realct.hu_bias(output, ref, exclude, self.flat_smooth_px))
        truth = pair.phantom.hu
        for lesion in pair.phantom.lesions:
            self.contrasts.append((region_contrast(ref, lesion, truth),
                                   region_contrast(output, lesion, truth), lesion.contrast_hu,
                                   lesion.radius))
        if self.count_blobs:
            self.blobs += false_blobs(windowed(output), windowed(ref), pair.phantom.lesions)
        self.images += 1

    @classmethod
    def combined(cls, parts: Sequence["Scores"]) -> "Scores":
        """One Scores of several (e.g. every series' at one noise level), each image scored
        once; the settings are the first part's."""
        first = parts[0]
        return cls(psnr=[v for p in parts for v in p.psnr], ssim=[v for p in parts for v in p.ssim],
                   contrasts=[v for p in parts for v in p.contrasts],
                   blobs=sum(p.blobs for p in parts), images=sum(p.images for p in parts),
                   seconds=[v for p in parts for v in p.seconds],
                   bias=[v for p in parts for v in p.bias], bins=first.bins,
                   bias_without_lesions=first.bias_without_lesions,
                   count_blobs=first.count_blobs, flat_smooth_px=first.flat_smooth_px)

    def summary(self) -> dict[str, Any]:
        out = {"psnr_db": float(np.mean(self.psnr)), "ssim": float(np.mean(self.ssim))}
        if self.count_blobs:
            out["false_blobs_per_image"] = self.blobs / max(1, self.images)
        bias = np.array([b for b in self.bias if np.isfinite(b)])  # NaN: no flat tissue
        if len(self.bias):
            out.update({"hu_bias_mean": float(bias.mean()) if bias.size else float("nan"),
                        "hu_bias_max_abs": float(np.abs(bias).max()) if bias.size else float("nan")})
        if self.contrasts:
            ref, got, designed, radius = (np.array(c) for c in zip(*self.contrasts))
            error = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-6)
            shown = reference_shows(ref, designed)
            lost = got * np.sign(ref) < 0.5 * np.abs(ref)
            kept = got / np.where(np.abs(ref) > 1e-6, ref, 1e-6)
            out.update({
                "lesion_contrast_error": float(error[shown].mean()) if shown.any() else None,
                "lesions_lost": float(lost[shown].mean()) if shown.any() else None,
                "lesions_shown": int(shown.sum()), "lesions": len(ref),
                "lesion_contrast_error_all": float(error.mean()),
                "lesion_contrast_error_pooled": float(np.abs(got - ref).sum()
                                                      / np.abs(ref).sum()),
                "lesion_contrast_by_radius": by_radius(kept, lost, radius, shown, self.bins),
            })
        if self.seconds:
            out["seconds_median"] = float(np.median(self.seconds))
        return out


def by_radius(kept: np.ndarray, lost: np.ndarray, radius: np.ndarray, shown: np.ndarray,
              bins: Sequence[tuple[float, float]] = SIZE_BINS) -> list[dict[str, Any]]:
    """Per radius band (``bins``, px), over the lesions the reference shows: how many, the
    median share of the reference's contrast the output keeps, and the share lost."""
    rows = []
    for i, (lo, hi) in enumerate(bins):
        last = i == len(bins) - 1
        band = shown & (radius >= lo) & ((radius <= hi) if last else (radius < hi))
        rows.append({"radius_px": [lo, hi], "lesions": int(band.sum()),
                     "median_kept": float(np.median(kept[band])) if band.any() else None,
                     "lost": float(lost[band].mean()) if band.any() else None})
    return rows


def gaussian(hu: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(hu.astype(np.float64), sigma)


def nl_means(hu: np.ndarray, h: float) -> np.ndarray:
    """scikit-image's non-local means on the windowed image; ``h`` as a multiple of the noise
    sigma it estimates (its documented recipe). estimate_sigma reads the finest wavelet scale,
    where the soft-tissue kernel leaves little of CT's correlated noise, so the best multiple
    is large (about 6 on validation); the tuning grid reaches 10."""
    from skimage.restoration import denoise_nl_means, estimate_sigma

    x = windowed(hu)
    sigma = float(estimate_sigma(x))
    return denoise_nl_means(x, h=h * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                            fast_mode=True)


def have_bm3d() -> bool:
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


# The bm3d package's profiles offered: "np", its normal profile (the synthetic evaluation's,
# and every site figure until the site evaluation took "lc"; CHANGELOG), and "lc", its
# low-complexity one (fewer, smaller block-matching searches): on 3 real 512 px head slices
# 2.9x faster (1.9 s against 5.5 s on 2 cores) and 0.03 / 0.03 / 0.05 dB under "np" at 20 /
# 40 / 80 HU, each at its best factor (paired); 0.03 / 0.05 / 0.07 dB between two 50-slice
# runs whose simulations differed slightly (docs/site.md).
BM3D_PROFILES = ("np", "lc")


def check_bm3d_profile(profile: object) -> str:
    if profile not in BM3D_PROFILES:
        raise InputError(f"bm3d_profile: {profile!r} is not one of {', '.join(BM3D_PROFILES)} "
                         "(np: BM3D's normal profile; lc: its low-complexity one, ~3x faster)")
    return str(profile)


def bm3d_filter(hu: np.ndarray, factor: float, noise_hu: float, profile: str = "np") -> np.ndarray:
    """BM3D on the windowed image with sigma = ``factor`` x the image's noise level (HU),
    with the bm3d package's ``profile`` (BM3D_PROFILES)."""
    import bm3d

    check_bm3d_profile(profile)
    return bm3d.bm3d(windowed(hu), sigma_psd=factor * noise_hu,
                     profile=bm3d.BM3DProfileLC() if profile == "lc" else profile)


def oracle_noise(low: np.ndarray, reference: np.ndarray) -> float:
    """The low-dose image's soft-tissue noise, measured against its reference."""
    return ctsim.noise_hu(low, reference)


def tune(method: Callable[[np.ndarray, float], np.ndarray], grid: Sequence[float],
         pairs: Sequence[ctsim.Pair]) -> float:
    """The grid value with the best mean PSNR on ``pairs`` (validation data only)."""
    scores = [np.mean([psnr(p.full, method(p.low, v)) for p in pairs]) for v in grid]
    return float(grid[int(np.argmax(scores))])


# BM3D's sigma, as a multiple of the true (white-equivalent) noise std. CT noise after filtered
# back projection is correlated, so BM3D's white-noise model needs more than 1x: on CT_small at
# 20 / 40 / 80 HU its best factor is 2.0 / 2.5 / 2.5 (44.0 / 40.1 / 36.1 dB against 43.5 / 39.0 /
# 34.3 at 1.5), as good as BM3D given the noise's measured power spectrum (43.9 / 39.9 / 36.1 dB).
# A grid that stopped at 1.5 (until 2026-11-28) left BM3D 0.9-1.9 dB weaker on real anatomy.
BM3D_GRID = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5)


@dataclass(frozen=True)
class TunedBM3D:
    """BM3D with a factor per noise level, tuned on validation: ``factors`` holds (noise std
    of a validation set in HU, its best factor); an image takes the factor of the level
    nearest its own true noise (in log)."""

    factors: tuple[tuple[float, float], ...]
    profile: str = "np"  # the bm3d package's profile (BM3D_PROFILES)

    def factor(self, noise_hu: float) -> float:
        levels = np.array([level for level, _ in self.factors])
        nearest = int(np.argmin(np.abs(np.log(levels) - np.log(max(noise_hu, 1e-3)))))
        return self.factors[nearest][1]

    def __call__(self, hu: np.ndarray, reference: np.ndarray) -> np.ndarray:
        noise = oracle_noise(hu, reference)
        return bm3d_filter(hu, self.factor(noise), noise, self.profile)

    def label(self) -> str:
        return ("bm3d (" + "/".join(f"{f:g}" for _, f in self.factors) + " x noise"
                + ("" if self.profile == "np" else f", profile {self.profile}") + ")")


def tune_bm3d(levels: Sequence[Sequence[Any]], grid: Sequence[float] = BM3D_GRID,
              echo: Callable[[str], None] = print) -> TunedBM3D:
    """The factor with the best mean PSNR for each set of validation pairs in ``levels`` (one
    set per noise level or dose; any pairs with ``low`` and ``full`` in HU)."""
    factors = []
    for pairs in levels:
        noises = [oracle_noise(p.low, p.full) for p in pairs]  # once per pair, not per factor
        scores = [np.mean([psnr(p.full, bm3d_filter(p.low, c, n)) for p, n in zip(pairs, noises)])
                  for c in grid]
        best = int(np.argmax(scores))
        noise = float(np.mean(noises))
        if best == len(grid) - 1:  # the optimum may lie beyond the grid: say so, never hide it
            echo(f"BM3D: best factor at {noise:.0f} HU is the grid's largest ({grid[-1]:g})")
        factors.append((round(noise, 1), float(grid[best])))
    return TunedBM3D(tuple(sorted(factors)))


# The mapping `scanside enhance` applies to CT: the modality default window, [-1000, 1000] HU.
HU_WINDOW = Window(center=sum(WINDOW) / 2, width=DATA_RANGE, source="modality default")


def to_unit(hu: np.ndarray) -> np.ndarray:
    return HU_WINDOW.to_unit(hu)


def model_enhancer(engine_dir: Optional[Path], sampling: Sampling):
    from scanside import Pipeline

    pipe = Pipeline.load(engine_dir)

    def enhance(hu: np.ndarray) -> np.ndarray:
        return HU_WINDOW.from_unit(pipe.enhance(to_unit(hu), sampling))

    return pipe, enhance


def vae_round_trip(pipe, hu: np.ndarray) -> np.ndarray:
    """The reference through the VAE alone: the best any output of this model can be."""
    return HU_WINDOW.from_unit(pipe.reconstruct(to_unit(hu)))


def evaluate(engine_dir: Optional[Path] = None, *, pairs: int = ctsim.TEST_PAIRS,
             split: str = "test", workers: int = 2, echo: Callable[[str], None] = print,
             skip: frozenset = frozenset(), sampling: Optional[Sampling] = None,
             **settings: Any) -> dict[str, Any]:
    """Figures for the engine (the embedded default when None) on ``pairs`` pairs of
    ``split``: "test" for the figures, "val" to choose sampling settings without touching
    the test set. ``skip`` leaves out sections by name (SECTIONS)."""
    sampling = Sampling.of(sampling, **settings)
    unknown = set(skip) - set(SECTIONS)
    if unknown:
        raise ValueError(f"evaluate: unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    pipe, enhance = model_enhancer(engine_dir, sampling)
    size = ctsim.TEST_SIZE
    echo(f"simulating {VAL_PAIRS} validation and {pairs} {split} pairs at {size} px ...")
    val = ctsim.make_pairs(ctsim.split_seeds("val", VAL_PAIRS), size, workers)
    test = ctsim.make_pairs(ctsim.split_seeds(split, pairs), size, workers)
    sigma = tune(gaussian, np.arange(0.4, 3.01, 0.1).round(2), val)
    h = tune(nl_means, np.arange(0.5, 10.01, 0.25).round(2), val)
    echo(f"baselines tuned on validation: Gaussian sigma {sigma:.1f} px, NLM h {h:.1f} x sigma")
    methods: dict[str, Method] = {
        "low-dose input": lambda hu, ref: hu,
        f"gaussian (sigma {sigma:.1f})": lambda hu, ref: gaussian(hu, sigma),
        f"nl-means (h {h:.1f} sigma)": lambda hu, ref: nl_means(hu, h),
    }
    bm3d = None
    if "bm3d" in skip:
        echo("BM3D: skipped")
    elif have_bm3d():
        echo(f"BM3D: tuning its factor on the validation phantoms at {len(DOSES)} doses ...")
        bm3d = tune_bm3d([val if dose == 1.0 else ctsim.make_pairs(
            ctsim.split_seeds("val", VAL_PAIRS), size, workers, low=ctsim.LOW_DOSE * dose)
            for dose in DOSES], echo=echo)
        echo(f"BM3D tuned on validation: {factors_text(bm3d)}")
        methods[bm3d.label()] = bm3d
    else:
        echo("BM3D: not installed (pip install bm3d; non-commercial licence), left out")
    methods["scanside"] = lambda hu, ref: enhance(hu)
    enhance(test[0].low)  # warm-up: first runs allocate ORT's arena
    results: dict[str, Scores] = {name: Scores() for name in methods}
    for i, pair in enumerate(test):
        for name, method in methods.items():
            started = time.perf_counter()
            out = method(pair.low, pair.full)
            results[name].seconds.append(time.perf_counter() - started)
            results[name].add(out, pair)
        if (i + 1) % 20 == 0:
            echo(f"  {i + 1}/{len(test)} test pairs")
    ceiling = float(np.mean([psnr(p.full, vae_round_trip(pipe, p.full)) for p in test]))
    compared = peers(methods)
    sweep = [] if "doses" in skip else dose_sweep(
        compared, ctsim.split_seeds(split, pairs)[:DOSE_PAIRS], test[:DOSE_PAIRS], workers, echo)
    real, anatomy_val, anatomy_bm3d = [], [], None
    if "anatomy" not in skip or ("real" not in skip and bm3d is not None):
        anatomy_pairs = realct.validation_pairs()
        if bm3d is not None:  # real CT is tuned for on the held-out anatomy, not on phantoms
            echo("BM3D: tuning its factor on the held-out anatomy at each noise level ...")
            anatomy_bm3d = tune_bm3d([[p for p in anatomy_pairs if p.noise_hu == sigma]
                                      for sigma in realct.NOISE_HU], echo=echo)
            echo(f"BM3D tuned on held-out anatomy: {factors_text(anatomy_bm3d)}")
            compared = {"low-dose input": methods["low-dose input"],
                        anatomy_bm3d.label(): anatomy_bm3d, "scanside": methods["scanside"]}
        if "anatomy" not in skip:
            echo("synthetic anatomy (validation): held-out head, chest and photograph scenes ...")
            anatomy_val = realct.score(compared, anatomy_pairs, psnr)
    if "real" not in skip:
        echo("real anatomy: pydicom's CT slices through the scan chain at 20/40/80 HU ...")
        real = realct.score(compared, realct.real_pairs(repeats=realct.REAL_DRAWS), psnr)
    m = pipe.manifest
    return {
        "vae_round_trip_psnr_db": ceiling, "lesion_floor": lesion_floor(test),
        "dose_sweep": sweep, "real_anatomy": real, "anatomy_validation": anatomy_val,
        "bm3d_factors": {"phantoms": None if bm3d is None else bm3d.factors,
                         "anatomy": None if anatomy_bm3d is None else anatomy_bm3d.factors},
        "engine": str(pipe.engine_dir), "precision": m.precision.value,
        "model_hash": m.source_hash, "size": size, "split": split, "test_pairs": len(test),
        "sampling": pipe.sampling_defaults(**sampling.given()),
        "window_hu": list(WINDOW), "data_range": DATA_RANGE,
        "methods": {name: scores.summary() for name, scores in results.items()},
    }


SECTIONS = ("bm3d", "doses", "real", "anatomy")  # what `evaluate --skip` may leave out
DOSES = (0.25, 0.5, 1.0, 2.0, 4.0)  # x the nominal low dose (ctsim.LOW_DOSE)
DOSE_PAIRS = 30


def factors_text(peer: TunedBM3D) -> str:
    return ", ".join(f"{f:g}x at {noise:g} HU" for noise, f in peer.factors)


def peers(methods: dict[str, Method]) -> dict[str, Method]:
    """The methods the dose sweep and the real slices compare: the input, BM3D (when run) and
    the model; the Gaussian and NLM baselines are tuned for the nominal phantoms only."""
    return {n: f for n, f in methods.items()
            if n == "low-dose input" or n == "scanside" or n.startswith("bm3d")}


def dose_sweep(methods: dict[str, Method], seeds: Sequence[int], nominal: Sequence[ctsim.Pair],
               workers: int, echo: Callable[[str], None]) -> list[dict[str, Any]]:
    """Mean PSNR of ``methods`` on the phantoms of ``seeds`` at every dose (``nominal``: their
    pairs at the nominal dose, already simulated)."""
    rows = []
    for dose in DOSES:
        echo(f"  dose {dose:g}x: {len(seeds)} pairs")
        scans = nominal if dose == 1.0 else ctsim.make_pairs(
            list(seeds), ctsim.TEST_SIZE, workers, low=ctsim.LOW_DOSE * dose)
        rows.append({"dose": dose, "pairs": len(scans), "psnr_db": {
            name: float(np.mean([psnr(p.full, f(p.low, p.full)) for p in scans]))
            for name, f in methods.items()}})
    return rows


def table(result: dict[str, Any]) -> str:
    rows = [f"{result['test_pairs']} held-out {result['split']} pairs, {result['size']} px, "
            f"{result['precision']} engine, window {result['window_hu']} HU, "
            f"data_range {result['data_range']:g}",
            f"{'method':<24}{'PSNR dB':>9}{'SSIM':>8}{'lesion err':>12}{'all':>7}{'pooled':>8}"
            f"{'lost':>7}{'blobs/img':>11}{'s/image':>9}{'HU bias':>9}{'max|b|':>8}"]
    percent = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for name, s in result["methods"].items():
        rows.append(f"{name:<24}{s['psnr_db']:>9.2f}{s['ssim']:>8.4f}"
                    f"{percent(s.get('lesion_contrast_error')):>12}"
                    f"{percent(s.get('lesion_contrast_error_all')):>7}"
                    f"{percent(s.get('lesion_contrast_error_pooled')):>8}"
                    f"{percent(s.get('lesions_lost')):>7}"
                    f"{s['false_blobs_per_image']:>11.2f}{s.get('seconds_median', 0):>9.3f}"
                    f"{s.get('hu_bias_mean', float('nan')):>+9.2f}"
                    f"{s.get('hu_bias_max_abs', float('nan')):>8.2f}")
    first = next(iter(result["methods"].values()))
    if "lesions" in first:
        rows.append(f"lesion err and lost: over the {first['lesions_shown']} of "
                    f"{first['lesions']} lesions the reference shows (>= {SHOWN:.0%} of their "
                    "designed contrast); all: every lesion; pooled: sum|error| / sum|contrast|")
    if first.get("lesion_contrast_by_radius"):
        bands = first["lesion_contrast_by_radius"]
        rows.append("lesion contrast kept (median output / reference) and lost, by radius "
                    + " | ".join(f"{b['radius_px'][0]:g}-{b['radius_px'][1]:g} px "
                                 f"({b['lesions']})" for b in bands) + ":")
        width = max(24, *(len(name) + 1 for name in result["methods"]))
        for name, s in result["methods"].items():
            rows.append(f"{name:<{width}}" + " | ".join(
                "-" if b["median_kept"] is None else f"{b['median_kept']:.2f} {percent(b['lost'])}"
                for b in s.get("lesion_contrast_by_radius", [])))
    floor = result.get("lesion_floor") or {}
    if floor.get("measured") is not None:
        rows.append(f"lesion err the low-dose data allow an oracle that knows each lesion's disk "
                    f"and background: {percent(floor['measured'])} measured, "
                    f"{percent(floor['bayes'])} with the contrast prior")
    rows.append(f"VAE round trip of the reference (the ceiling for any output): "
                f"{result['vae_round_trip_psnr_db']:.2f} dB")
    sweep = result.get("dose_sweep") or []
    if sweep:
        names = list(sweep[0]["psnr_db"])
        rows.append("dose sweep (PSNR dB): " + " | ".join(names))
        for r in sweep:
            rows.append(f"  {r['dose']:>5g}x  " + "  ".join(f"{r['psnr_db'][n]:>7.2f}" for n in names))
    if result.get("real_anatomy"):
        rows.append(realct.table(result["real_anatomy"]))
    if result.get("anatomy_validation"):
        rows.append(realct.table(result["anatomy_validation"],
                                 "synthetic anatomy, held-out scenes (validation)"))
    return "\n".join(rows)
