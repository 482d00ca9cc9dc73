"""Synthetic CT for the default model: seeded phantoms in Hounsfield units and a physically
motivated low-dose simulation, so no patient data is ever needed.

The simulation follows the scanner's chain: attenuation line integrals (parallel-beam Radon
transform over 360 views), Poisson photon counts at an incident count per ray (the dose), the
log, and filtered back projection with a Hann-apodised ramp, a soft-tissue kernel. The noise it
leaves has CT's correlated, streaky texture. The full-dose reference goes through the same
chain at a high count, so the pair differs only in dose.

Why Hann: the bare ramp filter on a pixel-sharp phantom left 15.6 HU RMS of deterministic
high-frequency ringing in the full-dose reference's soft tissue (vs the phantom; 3.4 HU with
Hann), more than the lesions' contrast; it was the same in both doses, so no denoiser could
tell it from noise, and NLM and the first default model both stopped at that floor.
Needs scikit-image (``pip install 'scanside[train]'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

MU_WATER = 0.19  # 1/cm at ~70 keV effective energy
PIXEL_CM = 0.08  # 0.8 mm pixels: a 128-pixel field of view is ~10 cm (a child's chest / a limb)
VIEWS = 360  # projections over 180 degrees: above the ~200 a 128-pixel field needs
KERNEL = "hann"  # reconstruction filter (scikit-image's name); see the module docstring
LOW_DOSE = 1.5e3  # incident photons per ray: ~38 HU noise in soft tissue at 128 px (measured)
FULL_DOSE = 1.5e5  # 100x: ~4 HU, the reference is almost noiseless, through the same chain
LESION_RADIUS = (2.5, 5.0)  # px
LESION_CONTRAST = (20.0, 50.0)  # |HU|: low contrast, yet above the Rose criterion at full dose
LESION_MARGIN = 5  # px around a lesion that must be the same tissue: its measurement ring


@dataclass(frozen=True)
class Lesion:
    y: float  # centre, pixels
    x: float
    radius: float
    contrast_hu: float  # lesion minus its surroundings


@dataclass(frozen=True)
class Phantom:
    hu: np.ndarray  # (H, W) float32 Hounsfield units
    lesions: tuple[Lesion, ...]


def ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float,
            angle: float = 0.0) -> np.ndarray:
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Band-limited texture: white noise low-passed in Fourier space, unit std."""
    white = rng.standard_normal(shape)
    fy, fx = np.meshgrid(np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1]), indexing="ij")
    field = np.real(np.fft.ifft2(np.fft.fft2(white) * np.exp(-(fy**2 + fx**2) * scale**2 * 40)))
    return field / (field.std() + 1e-12)


def make_phantom(seed: int, size: int = 128) -> Phantom:
    """Body, lungs, bone rings and spine, organs of different soft-tissue HU, small
    low-contrast lesions, fine texture — all randomised from ``seed``."""
    rng = np.random.default_rng(seed)
    shape, c = (size, size), size / 2
    hu = np.full(shape, -1000.0)  # air
    body_ry, body_rx = size * rng.uniform(0.33, 0.42), size * rng.uniform(0.40, 0.47)
    body = ellipse(shape, c + rng.uniform(-3, 3), c, body_ry, body_rx)
    hu[body] = -100.0  # subcutaneous fat
    inner = ellipse(shape, c, c, body_ry * 0.88, body_rx * 0.9)
    hu[inner] = 40.0 + 10 * rng.standard_normal()  # soft tissue
    for side in (-1, 1):  # lungs
        lung = ellipse(shape, c - size * 0.02, c + side * body_rx * 0.45, body_ry * 0.6,
                       body_rx * 0.32, rng.uniform(-0.3, 0.3))
        hu[lung & inner] = rng.uniform(-880, -820)
    for _ in range(rng.integers(2, 5)):  # organs of other soft-tissue values
        organ = ellipse(shape, c + rng.uniform(-0.2, 0.25) * size, c + rng.uniform(-0.2, 0.2) * size,
                        rng.uniform(0.06, 0.12) * size, rng.uniform(0.06, 0.14) * size,
                        rng.uniform(0, np.pi))
        hu[organ & inner & (hu > -500)] = rng.choice([-60.0, 25.0, 55.0, 70.0])
    ring = ellipse(shape, c, c, body_ry * 0.93, body_rx * 0.95) & ~ellipse(
        shape, c, c, body_ry * 0.87, body_rx * 0.89)  # ribs: a broken bone ring
    angles = np.arctan2(*np.mgrid[0:size, 0:size] - c)
    hu[ring & (np.sin(angles * rng.integers(6, 10)) > 0.2)] = rng.uniform(700, 1100)
    spine = ellipse(shape, c + body_ry * 0.7, c, size * 0.05, size * 0.05)
    hu[spine] = rng.uniform(900, 1300)
    tissue = hu.copy()  # piecewise constant: which tissue each pixel is
    hu[body] += 8.0 * smooth_noise(rng, shape, 2.0)[body]  # fine tissue texture
    lesions: list[Lesion] = []
    taken = np.zeros(shape, bool)
    for _ in range(rng.integers(1, 4)):  # small low-contrast lesions in soft tissue
        for _attempt in range(200):  # cheap: most tries land on an organ edge
            y, x = rng.uniform(0.2, 0.8, 2) * size
            radius = rng.uniform(*LESION_RADIUS)
            # The lesion lies inside one soft tissue, clear of its edges, and most of the ring
            # its contrast is measured against (2-5 px outside it) is that tissue too, so
            # "lesion minus its surroundings" is defined.
            inside = ellipse(shape, y, x, radius + 3, radius + 3)
            ring = ellipse(shape, y, x, radius + LESION_MARGIN, radius + LESION_MARGIN) & ~inside
            value = tissue[int(y), int(x)]
            if (-200 < value < 200 and (tissue[inside] == value).all()
                    and (tissue[ring] == value).mean() >= 0.6 and not taken[inside | ring].any()):
                contrast = rng.choice([-1, 1]) * rng.uniform(*LESION_CONTRAST)
                hu[ellipse(shape, y, x, radius, radius)] += contrast
                taken |= inside | ring
                lesions.append(Lesion(y, x, radius, contrast))
                break
    return Phantom(hu.astype(np.float32), tuple(lesions))


def lesion_mask(phantom: Phantom, grow: float = 0.0) -> np.ndarray:
    """Bool (H, W): the phantom's lesion disks, each grown by ``grow`` px."""
    y, x = np.mgrid[0 : phantom.hu.shape[0], 0 : phantom.hu.shape[1]]
    mask = np.zeros(phantom.hu.shape, bool)
    for les in phantom.lesions:
        mask |= np.hypot(y - les.y, x - les.x) <= les.radius + grow
    return mask


def square(hu: np.ndarray, multiple: int = 1) -> np.ndarray:
    """Pad with air, centred, to a square whose side is a multiple of ``multiple``: the scan
    (``project``) takes square slices."""
    side = -(-max(hu.shape) // multiple) * multiple
    dy, dx = side - hu.shape[0], side - hu.shape[1]
    return np.pad(hu, ((dy // 2, dy - dy // 2), (dx // 2, dx - dx // 2)), constant_values=-1000.0)


def views_for(size: int) -> int:
    """Projections a ``size``-pixel field needs (~pi/2 per pixel across), at least VIEWS;
    an even count, so ``project`` reads each view and the one 90 degrees on from one rotation."""
    views = max(VIEWS, int(np.ceil(np.pi / 2 * size)))
    return views + views % 2


@dataclass(frozen=True)
class Projection:
    """Noise-free line integrals of one slice: the costly half of a scan, shared by every
    dose simulated from it."""
    line_integrals: np.ndarray  # (detectors, views), attenuation x length (unitless)
    theta: np.ndarray  # view angles, degrees
    size: int  # the slice's pixels across (square)
    pixel_cm: float


def project(hu: np.ndarray, pixel_cm: float = PIXEL_CM, views: Optional[int] = None) -> Projection:
    """Parallel-beam line integrals of a square HU slice with ``pixel_cm`` pixels."""
    if hu.ndim != 2 or hu.shape[0] != hu.shape[1]:
        raise ValueError(f"project: slice shape {hu.shape} is not square")
    theta = np.linspace(0.0, 180.0, views or views_for(hu.shape[0]), endpoint=False)
    mu = np.clip(MU_WATER * (1 + hu.astype(np.float64) / 1000.0), 0, None)  # 1/cm
    return Projection(radon(mu, theta) * pixel_cm, theta, hu.shape[0], pixel_cm)


def radon(image: np.ndarray, theta: "np.ndarray | list[float]") -> np.ndarray:
    """scikit-image's ``radon(image, theta, circle=False)`` in float64, about twice as fast
    for an even number of views over 180 degrees: the image rotated for view i, summed along
    its columns, is view i; summed along its rows, it is view i + views/2 (90 degrees on; a
    quarter turn about the rotation's centre pixel is exact on the grid). The rotations are
    most of a simulated scan's time. Other view counts go to scikit-image as they are."""
    from skimage.transform import radon as skimage_radon, warp

    theta = np.asarray(theta, dtype=np.float64)
    views = len(theta)
    half = views // 2
    if views % 2 or not np.allclose(theta[half:] - theta[:half], 90.0, rtol=0, atol=1e-9):
        return skimage_radon(image.astype(np.float64), theta=theta, circle=False)
    # scikit-image's padding for circle=False: to the diagonal, centred as it centres it
    diagonal = np.sqrt(2) * max(image.shape)
    pad = [int(np.ceil(diagonal - s)) for s in image.shape]
    before = [(s + p) // 2 - s // 2 for s, p in zip(image.shape, pad)]
    padded = np.pad(image.astype(np.float64), [(b, p - b) for b, p in zip(before, pad)])
    side, center = padded.shape[0], padded.shape[0] // 2
    out = np.zeros((side, views))
    # From warp's inverse map for angle + 90 degrees: view i + half at detector q is row
    # 2 * center - q of the image rotated for view i, which for an even side reaches row
    # `side`: one more row (and column) of the rotation is computed for it.
    rows = 2 * center - np.arange(side)
    for i, angle in enumerate(np.deg2rad(theta[:half])):
        cos_a, sin_a = np.cos(angle), np.sin(angle)
        matrix = np.array([[cos_a, sin_a, -center * (cos_a + sin_a - 1)],
                           [-sin_a, cos_a, -center * (cos_a - sin_a - 1)], [0, 0, 1]])
        rotated = warp(padded, matrix, clip=False, output_shape=(side + 1, side + 1))
        out[:, i] = rotated[:side, :side].sum(0)
        out[:, i + half] = rotated[:, :side].sum(1)[rows]
    return out


def reconstruct(proj: Projection, incident: float, seed: int, kernel: str = KERNEL) -> np.ndarray:
    """Poisson counts at ``incident`` photons per ray, log, filtered back projection -> HU."""
    from skimage.transform import iradon

    rng = np.random.default_rng(seed)
    counts = np.maximum(rng.poisson(incident * np.exp(-proj.line_integrals)), 1)  # starvation
    measured = -np.log(counts / incident) / proj.pixel_cm
    mu_rec = iradon(measured, theta=proj.theta, circle=False, filter_name=kernel,
                    output_size=proj.size)
    return ((mu_rec / MU_WATER - 1) * 1000).astype(np.float32)


def simulate_scan(hu: np.ndarray, incident: float, seed: int, views: int = VIEWS,
                  kernel: str = KERNEL, pixel_cm: float = PIXEL_CM) -> np.ndarray:
    """The slice through a parallel-beam scan at ``incident`` photons per ray, in HU."""
    return reconstruct(project(hu, pixel_cm, views), incident, seed, kernel)


def soft_tissue(reference: np.ndarray) -> np.ndarray:
    """Bool mask of the reference's soft tissue (-150..150 HU) away from edges: where a noise
    level is read. Needs scipy."""
    from scipy import ndimage

    soft = (reference > -150) & (reference < 150)
    return ndimage.binary_erosion(soft, iterations=3)


def noise_hu(image: np.ndarray, reference: np.ndarray) -> float:
    """Noise std of ``image`` (HU) in the reference's soft tissue; where a slice has too
    little of it (a lung or bone crop), over the whole object instead."""
    from scipy import ndimage

    mask = soft_tissue(reference)
    if mask.sum() < 50:
        mask = ndimage.binary_erosion(reference > -900, iterations=3)
    return float((image - reference)[mask].std()) if mask.sum() >= 50 else float("nan")


PILOT = 1e4  # photons per ray of the scan that measures an object's noise


def pilot_noise(proj: Projection, reference: np.ndarray, seed: int) -> float:
    """Soft-tissue noise (HU) of a scan at PILOT photons: with ``photons_for``, the count that
    gives any other noise level."""
    return noise_hu(reconstruct(proj, PILOT, seed), reference)


def scan_at_noise(proj: Projection, reference: np.ndarray, sigma_hu: float,
                  seed: int) -> tuple[np.ndarray, float]:
    """A scan whose soft-tissue noise is ``sigma_hu`` (within a few %): a pilot scan measures
    the object's noise, and since quantum noise goes as 1/sqrt(photons) the count that gives
    ``sigma_hu`` follows. Returns (image, photons)."""
    incident = photons_for(PILOT, pilot_noise(proj, reference, seed), sigma_hu)
    return reconstruct(proj, incident, seed + 1), incident


def photons_for(pilot: float, measured_hu: float, sigma_hu: float) -> float:
    """Photons per ray that give ``sigma_hu`` where ``pilot`` photons gave ``measured_hu``."""
    if not np.isfinite(measured_hu) or measured_hu <= 0:
        raise ValueError(f"photons_for: noise {measured_hu} HU measured at {pilot:g} photons; "
                         "the slice has no object to measure noise in")
    return float(pilot * (measured_hu / sigma_hu) ** 2)


@dataclass(frozen=True)
class Pair:
    low: np.ndarray  # low-dose reconstruction, HU
    full: np.ndarray  # full-dose reconstruction, HU (the reference)
    phantom: Phantom


def make_pair(seed: int, size: int = 128, low: float = LOW_DOSE, full: float = FULL_DOSE) -> Pair:
    """One training/evaluation pair, reproducible from ``seed``."""
    phantom = make_phantom(seed, size)
    return Pair(simulate_scan(phantom.hu, low, seed * 2 + 1),
                simulate_scan(phantom.hu, full, seed * 2 + 2), phantom)


# Splits are disjoint seed ranges, so anyone regenerates exactly the same train/val/test sets.
SPLIT_BASE = {"train": 0, "val": 1_000_000, "test": 2_000_000}
TEST_PAIRS = 100  # the held-out test set
TEST_SIZE = 128  # px: the phantoms' test slices (the model itself takes any size)


def split_seeds(split: str, count: int) -> list[int]:
    return [SPLIT_BASE[split] + i for i in range(count)]


def make_pairs(seeds: "list[int]", size: int = 128, workers: int = 1,
               low: float = LOW_DOSE) -> list[Pair]:
    """Pairs for ``seeds``, in order; ``workers`` processes share the Radon/FBP work."""
    from functools import partial

    make = partial(make_pair, size=size, low=low)
    if workers <= 1 or len(seeds) < 4:
        return [make(s) for s in seeds]
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(make, seeds, chunksize=max(1, len(seeds) // (workers * 8)))


def pair_arrays(seed: int, size: int = 128) -> dict[str, np.ndarray]:
    """One pair as the arrays the demo ships (``demo_pair.npz``): images rounded to int16 HU,
    lesions as rows of (y, x, radius, contrast)."""
    pair = make_pair(seed, size)
    as_hu = lambda image: np.round(image).astype(np.int16)  # noqa: E731
    return {"low": as_hu(pair.low), "full": as_hu(pair.full), "phantom": as_hu(pair.phantom.hu),
            "lesions": np.array([[les.y, les.x, les.radius, les.contrast_hu]
                                 for les in pair.phantom.lesions], np.float32).reshape(-1, 4),
            "seed": np.int64(seed)}


def to_model_range(hu: np.ndarray) -> np.ndarray:
    """HU -> the model's [-1, 1] (window [-1000, 1000], as `scanside enhance` feeds CT)."""
    return (np.clip(hu, -1000.0, 1000.0) / 1000.0).astype(np.float32)
