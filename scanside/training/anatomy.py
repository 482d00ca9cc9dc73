"""Training content with real anatomy and real image statistics, none of it patient data.

The first default model saw only ctsim's ellipse phantoms and learned them, not CT: on real
slices it shifted soft tissue by ~15 HU and faded ventricles. Its training data now mixes
three sources of slices in Hounsfield units (each a ``Scene``, scanned by ctsim's chain):

- ``head``: a pseudo-CT of the Colin27 head (MNI's average-of-27 T1 MRI of one volunteer, 1 mm,
  as Debian's ``mricron-data`` ships it in /usr/share/mricron/templates, BSD-3-clause per that
  package): air, scalp fat, muscle, skull, CSF, grey and white matter from the T1 intensities
  and the brain mask (``ch2bet``), resampled to a CT pixel size of 0.4-1.0 mm. Head CT is
  what scanners make most of, and what the project's real test slices show.
- ``natural``: scikit-image's bundled photographs (not its retina images, which are medical,
  nor its Shepp-Logan phantom, which is kept for testing), mapped to soft-tissue or full CT
  ranges inside a body outline: edges, textures and shapes no phantom has (natural images
  carry over to CT denoising: FBP-DTSGD, arXiv 2403.03551).
- ``phantom``: ctsim's own phantoms with their lesions, so the lesion-weighted loss still has
  lesions to weigh.
- ``chest``: XCIST's two voxelized XCAT adult chests (``data/xcist``, BSD-3-clause): lungs with
  their vessels, ribs, spine, heart chambers and great vessels, at chest CT's pixel sizes,
  with per-scene tissue values (contrast-enhanced blood in some) and texture.
- ``leaves``: procedural "dead leaves" images (occluding ellipses whose sizes follow the
  scale-invariant r^-3 law of natural images, each with its own HU and texture, edges blurred
  as a scanner's resolution blurs them): synthetic images that train a denoiser almost as
  well as photographs (Achddou et al., arXiv 2504.10201), in unlimited variety.
- ``tissue``: procedural body-wall anatomy with what the other sources lack and real neck,
  limb and abdominal CT is full of: muscle compartments with striation, fascial planes and
  fat septa under a pixel wide, small vessels, cortical bone around cancellous bone, an
  airway; rendered at twice the resolution and averaged down, so edges are as sharp as a
  scanner's pixels show them (the heads and photographs are interpolated up and soft).

Each source takes a seed and returns a Scene; nothing is read from the network. Needs
scikit-image, scipy and nibabel (``pip install 'scanside[train]'``) and, for heads,
``apt-get install mricron-data``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import ctsim

COLIN27 = Path("/usr/share/mricron/templates")
PIXEL_MM = (0.4, 1.0)  # the pixel sizes of clinical CT slices (512 px over 200-500 mm)
# scikit-image's photographs: no medical images (retina, microaneurysms, immunohistochemistry)
# and no Shepp-Logan (a test image).
NATURAL = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins",
           "grass", "gravel", "moon", "page", "rocket", "text", "hubble_deep_field", "cell")


class Source(str, enum.Enum):
    HEAD = "head"
    NATURAL = "natural"
    PHANTOM = "phantom"
    CHEST = "chest"
    LEAVES = "leaves"
    TISSUE = "tissue"


@dataclass(frozen=True)
class Scene:
    hu: np.ndarray  # (N, N) float32 Hounsfield units, air (-1000) outside the object
    pixel_mm: float
    source: Source
    lesions: tuple[ctsim.Lesion, ...] = field(default=())


# -- head: Colin27 pseudo-CT --------------------------------------------------------------
class MissingData(RuntimeError):
    """An offline data package the training data needs is not installed."""


def head_template_files() -> tuple[Path, Path]:
    """The Colin27 files head scenes are made from: the T1 head and its brain mask."""
    return COLIN27 / "ch2.nii.gz", COLIN27 / "ch2bet.nii.gz"


def head_template_present() -> bool:
    """Whether Debian's ``mricron-data`` (the Colin27 template) is installed: without it
    ``head`` scenes raise MissingData."""
    return all(f.is_file() for f in head_template_files())


@lru_cache(maxsize=1)
def colin27() -> tuple[np.ndarray, np.ndarray]:
    """(T1 head, brain mask), (181, 217, 181) at 1 mm, axial slices along the last axis."""
    try:
        import nibabel
    except ImportError as exc:
        raise MissingData("head slices need nibabel: pip install 'scanside[train]'") from exc
    files = head_template_files()
    if not head_template_present():
        raise MissingData(f"{files[0]}: not found; head slices need Debian's Colin27 template "
                          "(apt-get install mricron-data)")
    t1, brain = (np.asarray(nibabel.load(f).dataobj, dtype=np.float32) for f in files)
    return t1, brain > 0


def pseudo_ct(t1: np.ndarray, brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One axial T1 slice and its brain mask -> HU. Tissue values vary per scene by a few HU,
    as they do between patients and scanners."""
    from scipy import ndimage

    head = ndimage.binary_fill_holes(ndimage.binary_closing(t1 > 18, iterations=3))
    near_brain = ndimage.binary_dilation(brain, iterations=2)
    csf, grey, white = rng.normal(8, 2), rng.normal(38, 3), rng.normal(27, 2)
    hu = np.full(t1.shape, -1000.0, np.float32)
    # Brain: T1 dark CSF, mid grey matter, bright white matter; CT orders grey above white.
    hu[brain] = np.interp(t1[brain], [25, 50, 80, 112], [csf, csf + 4, grey, white])
    outside = head & ~brain
    dark = t1 < 45
    hu[outside & dark & near_brain] = csf  # the CSF around the brain
    bone = outside & dark & ~near_brain  # skull: T1-dark between brain and scalp
    hu[bone] = rng.uniform(700, 1400) - 300 * (t1[bone] / 45)  # marrow is brighter in T1
    soft = outside & ~dark
    # Scalp and muscle: T1 mid is muscle (~45 HU), T1 bright is fat (~-100 HU).
    hu[soft] = np.interp(t1[soft], [45, 90, 140, 200], [45, 50, -30, -100])
    return hu


def head_scene(seed: int) -> Scene:
    from scipy import ndimage

    rng = np.random.default_rng([seed, 1])
    t1, brain = colin27()
    z = int(rng.integers(35, 150))  # skull base to vertex
    hu = pseudo_ct(t1[:, :, z], brain[:, :, z], rng).T[::-1]  # (AP, LR), anterior up
    pixel_mm = float(rng.uniform(*PIXEL_MM))
    hu = ndimage.rotate(hu, rng.uniform(-15, 15), order=1, cval=-1000.0, reshape=True)
    hu = ndimage.zoom(hu, 1.0 / pixel_mm, order=1, cval=-1000.0)  # 1 mm -> pixel_mm
    hu += 4.0 * ctsim.smooth_noise(rng, hu.shape, 1.5) * (hu > -500)  # tissue texture
    return Scene(ctsim.square(hu, 16).astype(np.float32), pixel_mm, Source.HEAD)


# -- natural images mapped to HU ----------------------------------------------------------
@lru_cache(maxsize=None)
def natural_image(name: str) -> np.ndarray:
    """A scikit-image photograph as float32 gray in [0, 1]."""
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        image = rgb2gray(rgba2rgb(image) if image.shape[2] == 4 else image)
    image = image.astype(np.float32)
    return (image - image.min()) / max(float(np.ptp(image)), 1e-6)


def in_body(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A square HU image cut to an elliptical body of random size, with a 2-10 px layer of
    subcutaneous fat, in air: how the procedural sources (natural, leaves) become a slice."""
    size = hu.shape[0]
    shape, c = hu.shape, size / 2
    ry, rx = size * rng.uniform(0.36, 0.48), size * rng.uniform(0.36, 0.48)
    body = ctsim.ellipse(shape, c, c, ry, rx)
    inner = ctsim.ellipse(shape, c, c, ry - rng.uniform(2, 10), rx - rng.uniform(2, 10))
    out = np.full(shape, -1000.0, np.float32)
    out[body] = rng.uniform(-120, -80)  # subcutaneous fat
    out[inner] = hu[inner]
    return out


def natural_scene(seed: int, size: int = 256) -> Scene:
    """A random crop of a photograph inside an elliptical body with a fat layer: either soft
    tissue (a 60-400 HU span around 0-60 HU, as in an abdomen or brain) or the whole CT range
    (lung to bone)."""
    from scipy import ndimage

    rng = np.random.default_rng([seed, 2])
    image = natural_image(NATURAL[int(rng.integers(len(NATURAL)))])
    scale = rng.uniform(0.5, 1.5)
    crop = min(image.shape[0], image.shape[1], int(size / scale))
    y, x = (int(rng.integers(0, d - crop + 1)) for d in image.shape[:2])
    patch = ndimage.zoom(image[y : y + crop, x : x + crop], size / crop, order=1)[:size, :size]
    patch = np.rot90(patch, int(rng.integers(4)))
    if rng.random() < 0.7:
        span = rng.uniform(60, 400)
        hu = rng.uniform(0, 60) + span * (patch - 0.5)
    else:
        hu = np.interp(patch, [0, 0.3, 0.7, 1], [-950, -100, 100, rng.uniform(400, 1500)])
    return Scene(in_body(hu, rng), float(rng.uniform(*PIXEL_MM)), Source.NATURAL)


# -- ctsim phantoms -----------------------------------------------------------------------
def phantom_scene(seed: int) -> Scene:
    """ctsim's phantom (train seeds), at 128 px (as before) or 256 px."""
    rng = np.random.default_rng([seed, 3])
    size = int(rng.choice([128, 256]))
    phantom = ctsim.make_phantom(seed, size)
    return Scene(phantom.hu, float(rng.uniform(0.5, 1.0)), Source.PHANTOM, phantom.lesions)


# -- chest: XCIST's voxelized XCAT chests ---------------------------------------------------
XCIST = Path(__file__).parent / "data" / "xcist"
XCIST_PIXEL_MM = 0.25
CHEST_PIXEL_MM = (0.6, 1.0)  # a 512 px chest CT covers 300-500 mm
# HU range per XCIST material at a ~70 keV effective energy; each scene draws its own value.
CHEST_HU = {
    "ncat_water": (0, 15),  # the spinal canal's CSF
    "ncat_muscle": (40, 60),
    "ncat_lung": (-880, -780),
    "ncat_dry_spine": (250, 600),  # vertebrae: cancellous bone inside a cortical shell
    "ncat_dry_rib": (500, 1000),
    "ncat_adipose": (-120, -80),
    "ncat_blood": (35, 55),  # unenhanced; CHEST_CONTRAST of scenes get iodine
    "ncat_heart": (35, 55),
    "ncat_cartilage": (90, 200),
}
CHEST_CONTRAST = 0.4
CHEST_ENHANCED_BLOOD = (150, 350)


@lru_cache(maxsize=None)
def xcist_chest(name: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(material names, (M, H, W) float32 maps) of one XCIST chest zip, each map placed in the
    slab's common 0.25 mm grid as gecatsim's Phantom_Voxelized does: a map's centre lies at
    ((size + 1) / 2 - offset) pixels from the isocentre, and its rows run against y (read the
    other way, heart and blood, muscle and lung overlap; tests/training/test_anatomy.py)."""
    import json
    import zipfile

    with zipfile.ZipFile(XCIST / name) as archive:
        [meta_name] = [n for n in archive.namelist() if n.endswith(".json")]
        meta = json.loads(archive.read(meta_name))
        folder = meta_name.rsplit("/", 1)[0]
        maps, corners = [], []
        for i, file in enumerate(meta["volumefractionmap_filename"]):
            rows, cols = meta["rows"][i], meta["cols"][i]
            raw = np.frombuffer(archive.read(f"{folder}/{file}"),
                                dtype=meta["volumefractionmap_datatype"][i])
            maps.append(raw.reshape(rows, cols)[::-1])
            cy = (rows + 1) / 2 - meta["y_offset"][i]
            cx = (cols + 1) / 2 - meta["x_offset"][i]
            corners.append((round(cy - rows / 2), round(cx - cols / 2)))
    top = min(c[0] for c in corners)
    left = min(c[1] for c in corners)
    height = max(c[0] + m.shape[0] for c, m in zip(corners, maps)) - top
    width = max(c[1] + m.shape[1] for c, m in zip(corners, maps)) - left
    out = np.zeros((len(maps), height, width), np.float32)
    for k, ((y, x), m) in enumerate(zip(corners, maps)):
        out[k, y - top : y - top + m.shape[0], x - left : x - left + m.shape[1]] = m
    # Posterior is at the top of the slab as stored: turn it so anterior is up, as CT shows it.
    return tuple(meta["mat_name"]), np.ascontiguousarray(out[:, ::-1, ::-1])


def xcist_chests() -> tuple[str, ...]:
    names = tuple(sorted(p.name for p in XCIST.glob("*.zip")))
    if not names:
        raise MissingData(f"{XCIST}: no XCIST chest phantoms; reinstall scanside")
    return names


def chest_hu(materials: tuple[str, ...], maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Material maps -> HU with this scene's tissue values, air where no map is. Placed right,
    the maps partition the slab (no pixel holds two materials; tested)."""
    enhanced = rng.random() < CHEST_CONTRAST
    values = []
    for name in materials:
        lo, hi = CHEST_HU[name]
        if enhanced and name == "ncat_blood":
            lo, hi = CHEST_ENHANCED_BLOOD
        values.append(rng.uniform(lo, hi))
    hu = np.tensordot(np.asarray(values, np.float32), maps, axes=1)
    return np.where(maps.any(axis=0), hu, -1000.0).astype(np.float32)


def chest_scene(seed: int) -> Scene:
    """One of XCIST's chests at a chest CT pixel size, with body size, rotation, tissue values
    and texture drawn from ``seed``."""
    from scipy import ndimage
    from skimage.transform import rescale

    rng = np.random.default_rng([seed, 4])
    names = xcist_chests()
    materials, maps = xcist_chest(names[int(rng.integers(len(names)))])
    hu = chest_hu(materials, maps, rng)
    lung = hu < -700
    texture = ctsim.smooth_noise(rng, hu.shape, 6.0)  # 0.25 mm grid: texture of a few mm
    hu += np.where(lung, 25.0, 4.0) * texture * (hu > -950)
    pixel_mm = float(rng.uniform(*CHEST_PIXEL_MM))
    size = rng.uniform(0.85, 1.15)  # body habitus
    hu = rescale(hu, XCIST_PIXEL_MM * size / pixel_mm, order=1, anti_aliasing=True,
                 mode="constant", cval=-1000.0, preserve_range=True)
    hu = ndimage.rotate(hu, rng.uniform(-15, 15), order=1, cval=-1000.0, reshape=True)
    return Scene(ctsim.square(hu.astype(np.float32), 16), pixel_mm, Source.CHEST)


# -- leaves: dead-leaves images in HU ------------------------------------------------------
LEAVES_RADIUS_PX = (1.0, 80.0)  # smallest and largest leaf, pixels of a 256 px scene
LEAVES_MAX = 4000  # leaves drawn at most; the canvas is usually covered long before
# Tissue classes a leaf is drawn from: (share, low HU, high HU). Mostly soft tissue, where
# low-dose noise hides detail; some fat, lung and bone for the high-contrast edges.
LEAVES_TISSUE = ((0.70, -100.0, 100.0), (0.12, -130.0, -60.0), (0.08, -950.0, -500.0),
                 (0.10, 150.0, 1500.0))


def leaf_radii(rng: np.random.Generator, count: int, low: float, high: float) -> np.ndarray:
    """Radii with density r^-3 on [low, high] (inverse CDF): the scale-invariant size law
    of the dead-leaves model, so the image has edges at every scale."""
    u = rng.random(count)
    return 1.0 / np.sqrt(u / high**2 + (1 - u) / low**2)


def leaves_scene(seed: int, size: int = 256) -> Scene:
    """A dead-leaves image inside an elliptical body with a fat layer: ellipses dropped one
    under another until the canvas is covered, each of one tissue (LEAVES_TISSUE; in 60 % of
    scenes soft tissue only, narrowed to a random 20-150 HU span, as in brain or abdomen), with
    its own texture amplitude and grain, then blurred by 0.4-1.2 px (partial volume)."""
    from scipy import ndimage

    rng = np.random.default_rng([seed, 5])
    radii = leaf_radii(rng, LEAVES_MAX, *LEAVES_RADIUS_PX)
    label = np.full((size, size), -1, np.int32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    for k, r in enumerate(radii):  # the first leaf lies on top: later ones fill what is left
        cy, cx = rng.uniform(-r, size + r, 2)
        aspect, angle = rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
        y0, y1 = max(0, int(cy - r) - 1), min(size, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r) - 1), min(size, int(cx + r) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = y[y0:y1, x0:x1] - cy, x[y0:y1, x0:x1] - cx
        c, s = np.cos(angle), np.sin(angle)
        inside = ((dx * c + dy * s) / r) ** 2 + ((dy * c - dx * s) / (r * aspect)) ** 2 <= 1
        free = label[y0:y1, x0:x1] < 0
        label[y0:y1, x0:x1][inside & free] = k
        if k % 64 == 63 and (label >= 0).all():
            break
    count = int(label.max()) + 1
    label[label < 0] = count - 1
    shares, lows, highs = (np.array(v) for v in zip(*LEAVES_TISSUE))
    if rng.random() < 0.6:
        centre, span = rng.uniform(0, 60), rng.uniform(20, 150)
        values = centre + span * (rng.random(count) - 0.5)
    else:
        tissue = rng.choice(len(shares), count, p=shares / shares.sum())
        values = rng.uniform(lows[tissue], highs[tissue])
    # Texture: two grains of band-limited noise; each leaf takes one, at its own amplitude.
    grains = np.stack([ctsim.smooth_noise(rng, (size, size), g) for g in (1.0, 4.0)])
    grain = rng.integers(0, 2, count)
    amplitude = rng.uniform(0, 15, count) * (rng.random(count) < 0.7)
    hu = values[label] + amplitude[label] * np.take_along_axis(grains, grain[label][None], 0)[0]
    hu = ndimage.gaussian_filter(hu, rng.uniform(0.4, 1.2))
    return Scene(in_body(hu, rng), float(rng.uniform(*PIXEL_MM)), Source.LEAVES)


# -- tissue: procedural body-wall anatomy with sharp, fine structure ----------------------
TISSUE_RENDER = 2  # rendered at this many times the scene's resolution, then area-averaged
# Compartment tissues: (share, low HU, high HU): muscle, organ parenchyma, fat.
TISSUE_CLASSES = ((0.5, 35.0, 65.0), (0.25, 20.0, 80.0), (0.25, -130.0, -70.0))


def thin_lines(rng: np.random.Generator, shape: tuple[int, int], grain: float,
               width: float) -> np.ndarray:
    """A random network of curves ``width`` px wide (float mask, 0..1): the zero level set of
    band-limited noise, widened by |f| / |grad f| -- septa in fat."""
    f = ctsim.smooth_noise(rng, shape, grain)
    gy, gx = np.gradient(f)
    distance = np.abs(f) / np.maximum(np.hypot(gy, gx), 1e-6)
    return np.clip(width / 2 + 0.5 - distance, 0.0, 1.0)  # 1 px of anti-aliasing


def striation(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Unit-std texture of muscle fibres: white noise smoothed along one direction."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape), (rng.uniform(4, 10), 0.7))
    field = ndimage.rotate(field, rng.uniform(0, 180), reshape=False, order=1, mode="wrap")
    return field / (field.std() + 1e-12)


def tissue_scene(seed: int, size: int = 256) -> Scene:
    """A body cross-section of soft tissue: a wobbly outline with skin and a subcutaneous fat
    layer crossed by septa; inside, curved compartments of muscle (striated), organ or fat
    (with septa), separated by fat planes in some scenes; small vessels (contrast-enhanced in
    some scenes); 0-3 bones (cortex around mottled cancellous bone); perhaps an airway;
    2-10 HU of fine organ texture. Structure widths go down to a third of a pixel, so the
    image has the sharp, fine detail of a real reconstruction that interpolated sources lack."""
    rng = np.random.default_rng([seed, 6])
    n = size * TISSUE_RENDER
    shape = (n, n)
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) - n / 2
    angle, radius = np.arctan2(y, x), np.hypot(y, x)
    outline = n * rng.uniform(0.36, 0.48) * (1 + sum(
        rng.uniform(0, 0.06) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)))
    body = radius < outline
    fat_layer = rng.uniform(3, 25) * TISSUE_RENDER
    inner = radius < outline - fat_layer
    # Compartments: Voronoi cells of warped coordinates (curved borders).
    count = int(rng.integers(5, 26))
    warp = n * 0.03
    wy = y + warp * ctsim.smooth_noise(rng, shape, 12.0 * TISSUE_RENDER)
    wx = x + warp * ctsim.smooth_noise(rng, shape, 12.0 * TISSUE_RENDER)
    seeds = rng.uniform(-0.45 * n, 0.45 * n, (count, 2))
    dist = np.stack([np.hypot(wy - sy, wx - sx) for sy, sx in seeds])
    order = np.argsort(dist, axis=0)[:2]
    label = order[0]
    gap = np.take_along_axis(dist, order[1:2], 0)[0] - np.take_along_axis(dist, order[:1], 0)[0]
    shares, lows, highs = (np.array(v) for v in zip(*TISSUE_CLASSES))
    kind = rng.choice(len(shares), count, p=shares / shares.sum())
    values = rng.uniform(lows[kind], highs[kind])
    hu = values[label].astype(np.float32)
    muscle = (kind == 0)[label] & inner
    hu += rng.uniform(3, 12) * striation(rng, shape) * muscle
    fat_hu = rng.uniform(-120, -80)
    if rng.random() < 0.6:  # fascial planes of fat between compartments
        plane = np.clip(rng.uniform(0.6, 2.5) * TISSUE_RENDER / 2 + 0.5 - gap / 2, 0, 1)
        hu += plane * (fat_hu - hu)
    fatty = ((kind == 2)[label] & inner) | (body & ~inner)
    hu[body & ~inner] = fat_hu
    septa = thin_lines(rng, shape, rng.uniform(4, 12) * TISSUE_RENDER,
                       rng.uniform(0.3, 1.5) * TISSUE_RENDER) * fatty
    hu += septa * rng.uniform(60, 140)
    skin = (radius < outline) & (radius > outline - rng.uniform(1, 3) * TISSUE_RENDER)
    hu[skin] = rng.uniform(20, 60)
    # Vessels: small disks and elongated tubes in cross-section.
    enhanced = rng.random() < 0.4
    for _ in range(int(rng.integers(5, 41))):
        r = float(np.exp(rng.uniform(np.log(0.7), np.log(6.0)))) * TISSUE_RENDER
        cy, cx = rng.uniform(-0.4 * n, 0.4 * n, 2) + n / 2
        aspect, turn = rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
        vessel = ctsim.ellipse(shape, cy, cx, r * aspect, r, turn)
        hu[vessel & inner] = rng.uniform(150, 350) if enhanced else rng.uniform(35, 55)
    # Bones: cortex around cancellous bone.
    for _ in range(int(rng.integers(0, 4))):
        r = rng.uniform(8, 35) * TISSUE_RENDER
        cy, cx = rng.uniform(-0.3 * n, 0.3 * n, 2)
        d = np.hypot((y - cy) / rng.uniform(0.6, 1.0), x - cx)
        cortex = rng.uniform(1.5, 5) * TISSUE_RENDER
        # Cancellous bone: trabeculae finer than a pixel show as mottle of 100-400 HU.
        mottle = ctsim.smooth_noise(rng, shape, rng.uniform(0.7, 2.0) * TISSUE_RENDER)
        marrow = rng.uniform(120, 320) + rng.uniform(50, 150) * mottle
        hu = np.where(d < r - cortex, marrow, np.where(d < r, rng.uniform(900, 1600), hu))
    if rng.random() < 0.4:  # an airway: air in a soft-tissue wall
        r = rng.uniform(4, 15) * TISSUE_RENDER
        cy, cx = rng.uniform(-0.25 * n, 0.25 * n, 2)
        d = np.hypot(y - cy, x - cx)
        wall = rng.uniform(1, 3) * TISSUE_RENDER
        hu = np.where(d < r, -1000.0, np.where(d < r + wall, rng.uniform(20, 60), hu))
    hu += rng.uniform(2, 10) * ctsim.smooth_noise(rng, shape, 1.5 * TISSUE_RENDER) * body
    hu = np.where(body, hu, -1000.0)
    hu = hu.reshape(size, TISSUE_RENDER, size, TISSUE_RENDER).mean(axis=(1, 3))
    return Scene(hu.astype(np.float32), float(rng.uniform(*PIXEL_MM)), Source.TISSUE)


# -- lesions in anatomy -------------------------------------------------------------------
LESION_MM = (2.0, 4.0)  # radius: ctsim's 2.5-5 px lesions at its 0.8 mm pixels
FLAT_HU = 10.0  # std, HU, of the tissue around a lesion: texture passes, organ edges do not
LESION_AREA = 128 * 128  # lesions are drawn per this many pixels of flat soft tissue


def add_lesions(scene: Scene, rng: np.random.Generator, per_area: float) -> Scene:
    """``scene`` with small low-contrast disks (ctsim's contrasts, 2-4 mm radius) in its flat
    soft tissue, about ``per_area`` per LESION_AREA pixels of it, and their Lesion records.

    The phantoms' lesions are the only ones the lesion-weighted loss otherwise sees, always on
    ctsim's flat ellipses; in anatomy the model meets a faint disk on real tissue texture."""
    radius = (LESION_MM[0] / scene.pixel_mm, LESION_MM[1] / scene.pixel_mm)
    hu, lesions = draw_lesions(scene.hu, rng, per_area, radius, ctsim.LESION_CONTRAST)
    return Scene(hu, scene.pixel_mm, scene.source, scene.lesions + lesions)


def draw_lesions(image: np.ndarray, rng: np.random.Generator, per_area: float,
                 radius_px: tuple[float, float], contrast_hu: tuple[float, float],
                 smooth_px: float = 0.0) -> tuple[np.ndarray, tuple[ctsim.Lesion, ...]]:
    """A copy of the HU ``image`` with faint disks (radius and |contrast| uniform in the given
    ranges, either sign) in its flat soft tissue, about ``per_area`` per LESION_AREA pixels of
    it, and their Lesion records. A lesion goes where the mean HU over it and its measurement
    ring is soft tissue (-200..200) and the HU there vary by less than FLAT_HU (not across an
    organ edge), clear of the others. ``smooth_px``: judge flatness on the image smoothed by a
    Gaussian of this sigma, for images with noise of their own (a real scan's 10-20 HU would
    make no region flat; an organ edge stays an edge)."""
    from scipy import ndimage

    hu = image.astype(np.float64)
    if smooth_px:
        hu = ndimage.gaussian_filter(hu, smooth_px)
    r_max = radius_px[1]
    window = int(2 * (r_max + ctsim.LESION_MARGIN)) + 1
    mean = ndimage.uniform_filter(hu, window)
    std = np.sqrt(np.maximum(ndimage.uniform_filter(hu * hu, window) - mean * mean, 0.0))
    flat = (mean > -200) & (mean < 200) & (std < FLAT_HU)
    edge = int(np.ceil(r_max + ctsim.LESION_MARGIN))
    flat[:edge], flat[-edge:], flat[:, :edge], flat[:, -edge:] = False, False, False, False
    count = int(rng.poisson(per_area * flat.sum() / LESION_AREA))
    lesions, out, taken = [], image.copy(), np.zeros(hu.shape, bool)
    candidates = np.flatnonzero(flat)
    for _ in range(count):
        for _attempt in range(50):
            if not len(candidates):
                break
            y, x = np.unravel_index(candidates[rng.integers(len(candidates))], hu.shape)
            radius = float(rng.uniform(*radius_px))
            around = ctsim.ellipse(hu.shape, y, x, radius + ctsim.LESION_MARGIN,
                                   radius + ctsim.LESION_MARGIN)
            if taken[around].any():
                continue
            contrast = float(rng.choice([-1, 1]) * rng.uniform(*contrast_hu))
            out[ctsim.ellipse(hu.shape, y, x, radius, radius)] += contrast
            taken |= around
            lesions.append(ctsim.Lesion(float(y), float(x), radius, contrast))
            break
    return out, tuple(lesions)


MAKERS = {Source.HEAD: head_scene, Source.NATURAL: natural_scene, Source.PHANTOM: phantom_scene,
          Source.CHEST: chest_scene, Source.LEAVES: leaves_scene, Source.TISSUE: tissue_scene}


def make_scene(source: "Source | str", seed: int) -> Scene:
    return MAKERS[Source(source)](seed)
