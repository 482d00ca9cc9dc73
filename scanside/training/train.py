"""Training scanside's default model: low-dose CT denoising in Stable Diffusion's architecture.

Two stages, each resumable from what it left in OUT_DIR/train/:

1. data   scenes with anatomy (``anatomy``: Colin27 pseudo-CT heads, photographs mapped to
          HU, ctsim phantoms) at CT pixel sizes, each projected once and reconstructed at a
          near-noiseless reference dose and at two low doses of random noise level (15-90 HU
          in soft tissue); 128-px patches of (low, reference) pairs and lesion masks.
          The VAE is not trained: its weights are the identity (identity_vae.py);
2. unet   an image-conditioned UNet learns v-prediction of the reference latent, seeing the
          noisy latent concatenated with the low-dose image's latent (instruct-pix2pix's
          layout: unscaled posterior mean, so the export's default concat scale of 1 fits)
          and the task prompt's embedding from a frozen, randomly initialised CLIP text
          encoder (as SD freezes its CLIP). Image and prompt are each dropped for a share of
          samples, so classifier-free guidance works. Latents are encoded per step from
          patches turned by a random rotation/flip and with their noise scaled by a random
          factor, so every batch is new and the doses between those simulated are covered.

Every random draw of step k comes from a generator seeded by (seed, stage, k), so a run that
resumes from a checkpoint makes exactly the batches an uninterrupted run would have made.
The result is written in diffusers' folder format with fp16 safetensors in OUT_DIR/model.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from scanside.runtime import noise_level
from scanside.runtime.images import dihedral  # the scan geometry is rotation-invariant

from . import anatomy, ctsim
from .recipes import Recipe, RecipeName, build_components, recipe, write_tokenizer

log = logging.getLogger(__name__)
PROMPT = "low-dose CT, denoise"  # the task prompt the default model is trained with
# The settings the model ships with (its scanside.json; the engine's manifest carries them).
# Strength 0.05 of the 20-step DDIM schedule runs its last step only (t = 1, one UNet
# evaluation): the model is trained for exactly that (Settings.refine_t). One view: the
# 8-view self-ensemble cost 8x the time for 0.2 dB on the previous model, and a 512 px slice
# must take under a second on a 2-core CPU.
ENHANCE = {"prompt": PROMPT, "strength": 0.05, "steps": 20, "guidance": 1.0, "ensemble": 1}
# What a model is trained for (Settings.task): "denoise", the built-in enhancement model, or
# "lesions", the built-in lesion-candidate model: the same image-conditioned UNet whose sample
# is the lesion mask (MedSegDiff's form), run from pure noise over a few steps and seeds.
TASKS = ("denoise", "lesions")
LESION_PROMPT = "CT, focal lesion candidates"
# The lesion model's label and its SNOMED CT code (a segmentation engine's manifest names
# both; export refuses labels without a code).
LESION_LABELS = ({"label": 1, "name": "lesion candidate",
                  "category": {"scheme": "SCT", "value": "49755003",
                               "meaning": "Morphologically abnormal structure"},
                  "type": {"scheme": "SCT", "value": "52988006", "meaning": "Lesion"}},)
# Its sampling: strength 1 (from pure noise, "trailing" timesteps: t = 999 first), one DDIM
# step and one seed: a 512 px slice must be annotated in about a second on a 2-core CPU, one
# UNet call. More steps and seeds (--steps, --seeds) give the spread its uncertainty, at
# their cost. A candidate where the probability is above the threshold.
SEGMENT = {"prompt": LESION_PROMPT, "strength": 1.0, "steps": 1, "guidance": 1.0,
           "ensemble": 1, "seeds": 1, "threshold": 0.5}
STAGE_SEED = {"unet": 2}
LESION_STREAM = 7  # the random stream of the lesions drawn into a scene
REFERENCE_PHOTONS = 1e7  # per ray: the reference's noise is ~1 HU, far below any low dose


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    recipe: str = RecipeName.CT_DEFAULT.value
    # TASKS: "lesions" trains the UNet to draw the lesion mask from the low-dose image: every
    # sample starts from the mask's latent (no low-dose start), the image is never dropped,
    # and the mask is the lesions' own disks (lesion_grow not applied).
    task: str = "denoise"
    # The low-dose latent is multiplied by this before the UNet sees it (the manifest's
    # concat_scale, which the runtime applies): the lesion task's faint disks (10-60 HU, 0.01-
    # 0.06 in the model's range) beside the pure-noise x_t (std 1) were not learned at 1.
    concat_scale: float = 1.0
    # Scenes per source (anatomy.Source), and what each gives: two low doses, patches each.
    # Sized for this CPU: a 0.4 mm head is a 450 px scene, ~8 s to simulate, so heads give
    # more patches per scene. 2,748 patch pairs in about 7 min on 2 cores (measured).
    scenes: tuple[tuple[str, int], ...] = (("head", 64), ("natural", 100), ("phantom", 120))
    # XCIST's chests (anatomy.chest_scene) are not among the shipped model's scenes: 24 of them
    # (--scenes chest=24) added +0.1-0.4 dB on held-out chests but lost 1.5-3 points more of
    # the phantoms' lesions (run 9 in the model card).
    patches: tuple[tuple[str, int], ...] = (("head", 10), ("natural", 5), ("phantom", 3),
                                            ("chest", 10), ("leaves", 5), ("tissue", 5))
    patch: int = 128
    doses: int = 2
    # Soft-tissue noise of the simulated low doses, HU, log-uniform: about 1/4x to 4x the dose
    # of the ~40 HU the real-anatomy test calls nominal (noise goes as 1/sqrt(dose)).
    noise_hu: tuple[float, float] = (15.0, 90.0)
    # Each sample's noise (low - reference) is scaled by a log-uniform factor in this range,
    # which covers the doses between and around those simulated (Gaussian approximation of
    # the quantum noise, good above a few tens of photons per ray).
    noise_scale: tuple[float, float] = (0.7, 1.4)
    unet_steps: int = 4000  # 0.83-0.90 s each on 2 cores (measured): an hour
    unet_batch: int = 8
    unet_lr: float = 3e-4
    ema_decay: float = 0.999
    drop_image: float = 0.05  # share of samples without the low-dose latent
    drop_prompt: float = 0.05  # ... without the prompt
    drop_both: float = 0.05  # ... without either
    checkpoint_every: int = 100
    workers: int = 2
    # Training covers only the smallest timesteps, where enhancement runs (t <= refine_t):
    # the scheduler carries the image through x_t and the UNet predicts what to remove. A
    # share low_start of samples start from the LOW-dose latent at t >= 1, as the runtime's
    # img2img start does, with the reference latent as the target; the rest are plain
    # diffusion from the reference latent. (The previous model's earlier phases over wider
    # timesteps were dropped to fit training in an hour; not measured against this run.)
    refine_t: int = 60
    low_start: float = 0.75
    # The loss weighs lesion pixels (the phantoms' lesion disks, grown by lesion_grow px)
    # lesion_weight times more. Plain MSE made the model the posterior mean, which shrank
    # lesion contrast to a median 0.62x the reference's; weight 200 was chosen on validation
    # for the previous model (lesion error 44 -> 34 %, lost 32 -> 21 %, -0.05 dB).
    lesion_weight: float = 200.0
    lesion_grow: float = 1.0
    # Lesions drawn into the anatomy scenes too (anatomy.add_lesions), this many per 128^2 px
    # of their flat soft tissue; 0: only the phantoms carry lesions. 2 (run 10 in the model
    # card) lost 7 points fewer of the val phantoms' lesions but 0.9 dB on held-out anatomy:
    # not the default.
    anatomy_lesions: float = 0.0
    # Phase 2: tune_steps more steps from phase 1's weights, EMA and optimizer, on its own
    # cosine from tune_lr. The shipped model's phase 2 keeps phase 1's loss (power 0, no
    # block penalty): 2,000 steps gave +0.2 dB on the phantoms and +0.2-0.6 dB on held-out
    # synthetic anatomy, moved the phantoms' HU bias from -1.5 to +0.1 HU and kept their
    # lesions (runs 5 and 8 in the model card). Options tried there, not shipped:
    # - noise_weight_power: each sample's loss is divided by (its noise std)^power (normalised
    #   over the batch). Phase 1's loss is in absolute HU^2, so a 20 HU sample weighs 1/16 of
    #   an 80 HU one (runs 6 and 7: 2 and 1).
    # - lowfreq_weight: the error averaged over lowfreq_px blocks is penalised this much more,
    #   since a mean shift is what a reader notices and pixel MSE hardly sees (white error
    #   falls lowfreq_px^2-fold under the average; runs 6 and 7: 16). With either, 4.6 points
    #   more of the phantoms' lesions were lost.
    # - lesion_noise_weighted: whether lesion pixels' extra weight is also divided by the noise
    #   weight (True in run 6, False in run 7).
    tune_steps: int = 2000  # 0.83 s each on 2 cores alone: 28 min
    tune_lr: float = 1e-4
    noise_weight_power: float = 0.0
    lowfreq_weight: float = 0.0
    lowfreq_px: int = 8
    lesion_noise_weighted: bool = True
    # Scenes only phase 2 samples from (after phase 1's, same form as ``scenes``): a source
    # added this way continues phase 1's weights exactly as a run without it would, so its
    # effect is measured against the same phase 1 (run 12 in the model card).
    tune_scenes: tuple[tuple[str, int], ...] = ()
    # Phase 2's noise factor range, when not noise_scale's: (0.35, 1.4) shows the model inputs
    # down to ~5 HU of noise. The shipped model never saw under ~10 HU and erases real texture
    # a noiseless slice keeps (model card); None: phase 1's range.
    tune_noise_scale: "tuple[float, float] | None" = None
    # Phase 2 at one noise level: every patch's noise is scaled to this std (HU, over the
    # patch) within +-15 %, instead of by a factor. A model tuned so is a specialist for that
    # level, the most a noise-conditioned model could reach there (DnCNN-S against -B): the
    # measure of how much knowing the noise level can buy (run 19 in the model card).
    tune_noise_hu: "float | None" = None
    # A trained model folder (diffusers layout, e.g. scanside/default_model/checkpoint) to start
    # from instead of phase 1: its UNet, frozen text encoder and latent scale are loaded and the
    # run is tune_steps of phase 2 with a fresh optimizer (the EMA starts at its weights).
    # Phase 1's own state is not kept with a shipped model; this tries data on it directly.
    init: "str | None" = None


# The lesion task samples from pure noise: at the top timestep the scheduler's x_t still holds
# sqrt(alpha_bar) = 0.07 of the mask, which a UNet learns to read instead of the image (the
# first run drew lesion-shaped blobs anywhere, from the start noise alone). This share of its
# samples is therefore drawn at the top step with x_t pure noise: the zero terminal SNR the
# runtime meets (the v target is computed from that x_t, so the x0 it implies is the mask).
PURE_NOISE_SHARE = 0.75
TOP_STEP = 999


def start_draws(rng: np.random.Generator, b: int, settings: Settings):
    """Where each sample of a batch starts (see Settings.refine_t): (from the low-dose
    latent, at a timestep in 1..refine_t, or from the reference, in 0..refine_t; timestep).
    The lesion task: (pure noise at TOP_STEP, or the mask's x_t in 0..refine_t; timestep)."""
    if settings.task == "lesions":  # "low" marks the pure-noise samples at the top step
        top = rng.random(b) < PURE_NOISE_SHARE
        return top, np.where(top, TOP_STEP, rng.integers(0, settings.refine_t + 1, b))
    low = rng.random(b) < settings.low_start
    t_clean = rng.integers(0, settings.refine_t + 1, b)
    t_low = rng.integers(1, settings.refine_t + 1, b)
    return low, np.where(low, t_low, t_clean)


def cosine_lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def unet_lr(step: int, settings: Settings) -> float:
    if step < settings.unet_steps:
        return cosine_lr(step, settings.unet_steps, settings.unet_lr)
    return cosine_lr(step - settings.unet_steps, settings.tune_steps, settings.tune_lr)


def total_steps(settings: Settings) -> int:
    return settings.unet_steps + settings.tune_steps


def tuned_loss(pred, target, w, noise_std, settings: Settings):
    """Phase 2's loss (see Settings.tune_steps): per-sample weights from the noise level, and
    a penalty on the block-averaged error. ``w``: 1 + lesion_weight on lesion pixels."""
    import torch.nn.functional as F

    per_sample = w.new_tensor(noise_std).clamp_min(1e-3) ** -settings.noise_weight_power
    per_sample = (per_sample / per_sample.mean()).view(-1, 1, 1, 1)
    error = pred - target
    if settings.lesion_noise_weighted:
        weight = w * per_sample
    else:  # the noise level reweighs the plain pixels; lesion pixels keep phase 1's weight
        weight = per_sample + (w - 1)
    pixel = (error.pow(2) * weight).mean() / w.mean()
    low = F.avg_pool2d(error, settings.lowfreq_px)
    return pixel + settings.lowfreq_weight * (low.pow(2) * per_sample).mean()


class Checkpoints:
    """A stage's state (weights, optimizer, step) as safetensors plus its structure as JSON
    metadata: no pickle anywhere, so a checkpoint from elsewhere cannot run code when loaded.
    Written to a temporary name and renamed into place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str) -> Path:
        return self.folder / f"{stage}.safetensors"

    def load(self, stage: str) -> "dict[str, Any] | None":
        from safetensors.torch import safe_open

        path = self.path(stage)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            tree = json.loads(f.metadata()["scanside_state"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        return unpack_state(tree, tensors)

    def save(self, stage: str, state: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, Any] = {}
        tree = pack_state(state, "", tensors)
        tmp = self.path(stage).with_suffix(".partial")
        save_file(tensors, str(tmp), metadata={"scanside_state": json.dumps(tree)})
        os.replace(tmp, self.path(stage))


def pack_state(obj: Any, path: str, tensors: dict[str, Any]) -> Any:
    """Nested dicts/lists of tensors and plain values -> a JSON tree; tensors go to
    ``tensors`` under their path. Dict keys keep their type (optimizer state is keyed by int)."""
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()  # from any device
        return {"t": path}
    if isinstance(obj, dict):
        return {"d": [[k, pack_state(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"l": [pack_state(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"v": obj}
    raise TypeError(f"checkpoint state at {path or '/'}: {type(obj).__name__} is not storable")


def unpack_state(tree: Any, tensors: dict[str, Any]) -> Any:
    if "t" in tree:
        return tensors[tree["t"]]
    if "d" in tree:
        return {k: unpack_state(v, tensors) for k, v in tree["d"]}
    if "l" in tree:
        items = [unpack_state(v, tensors) for v in tree["l"]]
        return tuple(items) if tree["tuple"] else items
    return tree["v"]


class Progress:
    """One line per interval: step, smoothed loss, seconds per step and time left."""

    def __init__(self, stage: str, total: int, start: int, every: int,
                 echo: Callable[[str], None]) -> None:
        self.stage, self.total, self.every, self.echo = stage, total, every, echo
        self.start_step, self.started, self.loss = start, time.perf_counter(), None

    def update(self, step: int, loss: float, extra: str = "") -> None:
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        done = step + 1
        if done % self.every and done != self.total:
            return
        per_step = (time.perf_counter() - self.started) / max(1, done - self.start_step)
        left = per_step * (self.total - done)
        self.echo(f"{self.stage} step {done}/{self.total}  loss {self.loss:.5f}{extra}  "
                  f"{per_step:.2f} s/step  {left / 60:.1f} min left")


# -- stage 1: data ------------------------------------------------------------------------
def scene_patches(job: tuple[str, int, Settings]) -> dict[str, np.ndarray]:
    """One scene's training patches: (n, P, P) low, full (model range) and lesion masks."""
    source, seed, settings = job
    scene = anatomy.make_scene(source, seed)
    key = [settings.seed, seed, list(anatomy.Source).index(scene.source)]
    if settings.anatomy_lesions and scene.source is not anatomy.Source.PHANTOM:
        # Their own generator: patches and doses stay those of a run without lesions.
        scene = anatomy.add_lesions(scene, np.random.default_rng(key + [LESION_STREAM]),
                                    settings.anatomy_lesions)
    return scan_patches(scene.hu, scene.pixel_mm, scene.lesions, np.random.default_rng(key),
                        settings, dict(settings.patches)[scene.source.value], settings.doses)


def scan_patches(hu: np.ndarray, pixel_mm: float, lesions: "tuple[ctsim.Lesion, ...]",
                 rng: np.random.Generator, settings: Settings, per_dose: int,
                 doses: int) -> dict[str, np.ndarray]:
    """A square HU slice through the scan chain: a near-noiseless reference and ``doses`` low
    doses (soft-tissue noise log-uniform in settings.noise_hu), ``per_dose`` patches of each
    (one when the slice is no larger than a patch), with the lesions' masks."""
    proj = ctsim.project(hu, pixel_mm / 10)
    full = ctsim.reconstruct(proj, REFERENCE_PHOTONS, int(rng.integers(2**31)))
    measured = ctsim.pilot_noise(proj, full, int(rng.integers(2**31)))
    grow = settings.lesion_grow if settings.task == "denoise" else 0.0  # a mask is the disk
    lesion_mask = ctsim.lesion_mask(ctsim.Phantom(hu, lesions), grow)
    size, p = hu.shape[0], settings.patch
    out: dict[str, list] = {"low": [], "full": [], "lesions": []}
    for _ in range(doses):
        sigma = float(np.exp(rng.uniform(*np.log(settings.noise_hu))))
        low = ctsim.reconstruct(proj, ctsim.photons_for(ctsim.PILOT, measured, sigma),
                                int(rng.integers(2**31)))
        for _ in range(per_dose if size > p else 1):
            for _try in range(20):  # a patch mostly of the object, not of the air around it
                y, x = rng.integers(0, size - p + 1, 2)
                if (full[y : y + p, x : x + p] > -900).mean() >= 0.3:
                    break
            for name, image in (("low", low), ("full", full)):
                out[name].append(ctsim.to_model_range(image[y : y + p, x : x + p]))
            out["lesions"].append(lesion_mask[y : y + p, x : x + p])
    return {name: np.stack(v) for name, v in out.items()}


def scene_job(job: tuple[str, int, Settings]) -> tuple[tuple, dict[str, np.ndarray]]:
    """``scene_patches`` for a worker: the job back with its result, and errors naming it."""
    try:
        return job, scene_patches(job)
    except Exception as exc:
        raise RuntimeError(f"data: scene {job[0]} {job[1]} failed: {exc!r}") from exc


def scene_file(folder: Path, job: tuple[str, int, Settings]) -> Path:
    return folder / f"{job[0]}-{job[1]:05d}.npz"


def save_scene(folder: Path, job: tuple[str, int, Settings], part: dict[str, np.ndarray]) -> None:
    path = scene_file(folder, job)
    tmp = path.with_name(path.stem + ".partial.npz")
    np.savez(tmp, **part)
    os.replace(tmp, path)


def scene_jobs(scenes: tuple[tuple[str, int], ...], settings: Settings) -> list[tuple]:
    return [(source, seed, settings) for source, count in scenes for seed in range(count)]


def load_data(out: Path, settings: Settings, echo: Callable[[str], None]) -> dict:
    """Training patches of every scene, each scene simulated once and kept in
    OUT_DIR/train/scenes/ (a run folder holds one set of settings: train_default checks).
    Phase 1's scenes come first; ``data["phase1"]`` is how many patches they gave, the pool
    phase 1 samples from (Settings.tune_scenes)."""
    started = time.perf_counter()
    jobs = scene_jobs(settings.scenes, settings) + scene_jobs(settings.tune_scenes, settings)
    folder = out / "train" / "scenes"  # one file per scene: an interrupted stage resumes
    folder.mkdir(parents=True, exist_ok=True)
    todo = [job for job in jobs if not scene_file(folder, job).is_file()]
    echo(f"data: simulating {len(todo)} of {len(jobs)} scenes ({settings.workers} processes) ...")
    if settings.workers > 1 and len(todo) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(settings.workers) as pool:
            for done, (job, part) in enumerate(pool.imap_unordered(scene_job, todo), 1):
                save_scene(folder, job, part)
                if done % 50 == 0:
                    echo(f"data: {done}/{len(todo)} scenes")
    else:
        for job in todo:
            save_scene(folder, job, scene_job(job)[1])
    parts = []
    for job in jobs:
        with np.load(scene_file(folder, job), allow_pickle=False) as part:
            parts.append({name: part[name] for name in ("low", "full", "lesions")})
    data = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    phase1 = len(scene_jobs(settings.scenes, settings))
    data["phase1"] = sum(len(part["full"]) for part in parts[:phase1])
    echo(f"data: {len(data['full'])} patch pairs in {time.perf_counter() - started:.0f} s"
         + (f" ({len(data['full']) - data['phase1']} for phase 2 only)"
            if settings.tune_scenes else ""))
    return data


def sample(data: dict, rng: np.random.Generator, batch: int, settings: Settings,
           pool: "int | None" = None, noise_scale: "tuple[float, float] | None" = None,
           noise_hu: "float | None" = None):
    """A training batch: (low, full, lesions), (B, P, P) each, from the first ``pool`` patches
    (all by default), every patch turned by a random rotation/flip and its noise scaled by a
    random factor, log-uniform in ``noise_scale`` (default Settings.noise_scale) -- or, with
    ``noise_hu``, to that std over the patch within +-15 % (Settings.tune_noise_hu)."""
    pick = rng.choice(len(data["full"]) if pool is None else pool, batch, replace=False)
    views = rng.integers(0, 8, batch)
    low_high = np.log(noise_scale or settings.noise_scale)
    scale = np.exp(rng.uniform(*low_high, batch)).astype(np.float32)
    turn = lambda name: np.stack([dihedral(data[name][i], int(k))  # noqa: E731
                                  for i, k in zip(pick, views)])
    full, low, lesions = turn("full"), turn("low"), turn("lesions")
    if noise_hu is not None:  # the same draws, the factor's spread mapped onto +-15 %
        spread = (np.log(scale) - np.mean(low_high)) / (np.diff(low_high)[0] / 2)
        std = (low - full).reshape(batch, -1).std(axis=1) * 1000.0  # model range -> HU
        scale = (noise_hu * np.exp(spread * np.log(1.15)) / np.maximum(std, 1e-3)).astype(np.float32)
    low = full + scale[:, None, None] * (low - full)
    return low, full, lesions


def noise_std(low: np.ndarray, full: np.ndarray) -> np.ndarray:
    """Each sample's noise std over its patch (model range), floored at 2 % of the median so
    an almost noiseless patch cannot take the whole batch's weight."""
    std = (low - full).reshape(len(low), -1).std(axis=1)
    return np.maximum(std, 0.02 * np.median(std))


# -- stage 2: UNet ------------------------------------------------------------------------
def encode(vae, images: np.ndarray):
    """Posterior means of (B, H, W) images -> (B, 4, h, w) torch tensor, on the VAE's device."""
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(images[:, None])).to(vae.device)
    with torch.no_grad():
        return vae.encode(pixels).latent_dist.mean


def latent_scale(vae, data: dict, count: int = 256) -> float:
    """1 / std of reference latents: SD's scaling factor, from a fixed sample of phase 1's
    patches (so phase-2-only scenes leave phase 1 as it was)."""
    pool = data.get("phase1", len(data["full"]))
    pick = np.random.default_rng(0).choice(pool, min(count, pool), replace=False)
    return float(1.0 / encode(vae, data["full"][np.sort(pick)]).std())


@dataclass
class Batch:
    """Everything random in one UNet step, drawn with numpy from the step's own generator,
    so it can be made ahead of the step (``prefetched``) and on any device is the same."""

    low: np.ndarray  # (B, P, P) model range, each
    full: np.ndarray
    lesions: np.ndarray
    from_low: np.ndarray  # (B,) bool: starts from the low-dose latent (start_draws)
    t: np.ndarray  # (B,) timesteps
    noise: np.ndarray  # (B, C, h, w) the diffusion noise
    u: np.ndarray  # (B,) which conditions a sample loses
    noise_std: np.ndarray  # (B,) its low-dose noise std (phase 2's weights)
    level: "np.ndarray | None"  # (B,) the noise level fed to a noise-conditioned recipe


def draw_batch(data: dict, step: int, settings: Settings, latent: tuple[int, ...]) -> Batch:
    """Step ``step``'s batch; ``latent``: one sample's latent shape."""
    rng = np.random.default_rng([settings.seed, STAGE_SEED["unet"], step])
    b = settings.unet_batch
    in_phase1 = step < settings.unet_steps  # data["phase1"]: how many patches phase 1 has
    low, full, lesions = sample(data, rng, b, settings,
                                data.get("phase1") if in_phase1 else None,
                                None if in_phase1 else settings.tune_noise_scale,
                                None if in_phase1 else settings.tune_noise_hu)
    if settings.task == "lesions":
        low, full, lesions = insert_lesions(low, full, lesions,
                                            np.random.default_rng([settings.seed, 11, step]))
    from_low, t = start_draws(rng, b, settings)
    noise = rng.standard_normal((b, *latent), dtype=np.float32)
    u = rng.random(b)  # one draw decides which conditions a sample loses
    spec = recipe(settings.recipe)
    level = (noise_level.estimate(low) * spec.noise_level["scale"]).astype(np.float32) \
        if spec.noise_level else None  # the low-dose image's noise, as the runtime feeds it
    return Batch(low, full, lesions, from_low, t, noise, u, noise_std(low, full), level)


# The lesion task's disks drawn into each batch (insert_lesions): the scenes' own lesions are
# few (0.2-1 % of pixels, ~1,000 over all patches) for a detector to learn from. Radius and
# contrast cover and exceed what `models evaluate` inserts (3-10 px, 10-40 HU).
INSERT_PER_PATCH = 3.0  # Poisson mean, per 128 x 128 patch
INSERT_RADIUS_PX = (2.0, 10.0)
INSERT_CONTRAST_HU = (10.0, 60.0)
INSERT_BLUR_PX = 0.6  # the scan's resolution: a disk through FBP has soft edges
INSERT_FLAT_HU = 15.0  # std over the disk's neighbourhood in the reference: no organ edges


def insert_lesions(low: np.ndarray, full: np.ndarray, lesions: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faint disks added to (B, P, P) low and reference patches (model range) where the
    reference is flat soft tissue, and their masks added to ``lesions``. FBP is linear, so a
    disk added to both images after the scan is the disk scanned, up to the soft edge."""
    from scipy import ndimage

    low, full, lesions = low.copy(), full.copy(), lesions.astype(bool)
    size = low.shape[-1]
    yy, xx = np.mgrid[:size, :size]
    for i in range(len(low)):
        hu = full[i] * 1000.0
        mean = ndimage.uniform_filter(hu, 15)
        std = np.sqrt(np.maximum(ndimage.uniform_filter(hu * hu, 15) - mean * mean, 0.0))
        room = (np.abs(mean) < 200) & (std < INSERT_FLAT_HU) & ~ndimage.binary_dilation(
            lesions[i], iterations=4)
        for _ in range(rng.poisson(INSERT_PER_PATCH)):
            spots = np.flatnonzero(room)
            if not len(spots):
                break
            y, x = np.unravel_index(spots[rng.integers(len(spots))], room.shape)
            radius = rng.uniform(*INSERT_RADIUS_PX)
            contrast = rng.choice([-1.0, 1.0]) * rng.uniform(*INSERT_CONTRAST_HU) / 1000.0
            disk = (yy - y) ** 2 + (xx - x) ** 2 <= radius * radius
            soft = ndimage.gaussian_filter(disk.astype(np.float32), INSERT_BLUR_PX) * contrast
            low[i] += soft
            full[i] += soft
            lesions[i] |= disk
            room &= (yy - y) ** 2 + (xx - x) ** 2 > (radius + 6) ** 2
    return low, full, lesions


def prefetched(make: Callable[[int], Any], steps: range, threads: int) -> Any:
    """``make(step)`` for each step, computed up to 2 x ``threads`` steps ahead in threads
    (numpy releases the GIL in its array work), in order. On a GPU the batches' numpy work
    would otherwise leave it idle half of every step; on a CPU it overlaps torch's."""
    import collections
    from concurrent.futures import ThreadPoolExecutor

    todo = iter(steps)
    with ThreadPoolExecutor(threads) as pool:
        ahead = collections.deque(pool.submit(make, s) for s in itertools.islice(todo, 2 * threads))
        while ahead:
            batch = ahead.popleft().result()
            following = next(todo, None)
            if following is not None:
                ahead.append(pool.submit(make, following))
            yield batch


def use_device(name: str):
    """The torch device training runs on, checked, with full float32 precision: TF32 would
    round the identity VAE's x + C (C = 100, identity_vae.py) to ~0.05 of the model range."""
    import torch

    from scanside.errors import InputError

    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"device {name}: expected cpu or cuda[:N]")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name}: this torch sees no CUDA GPU; train with "
                             "--device cpu, or install a CUDA build of torch")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True  # one batch shape throughout: pick the fastest
    return device


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def train_unet(unet, vae, scheduler, data: dict, embeddings, scaling: float, settings: Settings,
               ckpt: Checkpoints, echo: Callable[[str], None], device: Any = "cpu",
               validation: "Validation | None" = None):
    """Returns the EMA copy of the UNet (the weights that ship), on ``device``; with a
    ``validation``, it sees the EMA at every checkpoint and picks the weights returned."""
    import copy

    import torch

    unet.to(device)
    vae.to(device)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=0.0)
    start = 0
    state = ckpt.load("unet")
    if state is not None:
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])  # its state follows the parameters' device
        start = state["step"]
    total = total_steps(settings)
    alphas = torch.from_numpy(np.asarray(scheduler.alphas_cumprod, dtype=np.float32)).to(device)
    empty, task = (e.to(device) for e in embeddings)
    if start >= total:
        return ema if validation is None else validation.best(ema)
    echo(f"unet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, "
         f"steps {start}..{total} (lesion pixels x{settings.lesion_weight:g}; phase 2 from "
         f"step {settings.unet_steps}; batch {settings.unet_batch} on {device_name(torch.device(device))})")
    latent = tuple(encode(vae, data["full"][:1]).shape[1:])
    on = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    if validation is not None and start == 0:  # the starting weights are a candidate too
        validation(0, Enhancer(ema, vae, scaling, alphas, task))
    unet.train()
    progress = Progress("unet", total, start, 20, echo)
    threads = min(4, os.cpu_count() or 1)
    batches = prefetched(lambda k: draw_batch(data, k, settings, latent), range(start, total),
                         threads)
    for step, batch in zip(range(start, total), batches):
        cond = encode(vae, batch.low) * settings.concat_scale
        target_image = batch.full if settings.task == "denoise" else 2 * batch.lesions - 1
        x0 = encode(vae, target_image.astype(np.float32)) * scaling
        from_low = on(batch.from_low).view(-1, 1, 1, 1)
        t = on(batch.t)
        if settings.task == "lesions":  # from_low marks the pure-noise samples (start_draws)
            pure, from_low = from_low, torch.zeros_like(from_low)
        x_start = torch.where(from_low, cond * scaling, x0)
        lo = settings.drop_image
        hi = settings.drop_image + settings.drop_both + settings.drop_prompt
        no_image = on((batch.u < settings.drop_image + settings.drop_both)
                      & (settings.task == "denoise"))  # a mask needs its image
        no_prompt = on((batch.u >= lo) & (batch.u < hi))
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x_start + (1 - a).sqrt() * on(batch.noise)
        if settings.task == "lesions":
            xt = torch.where(pure, on(batch.noise), xt)
        # v-prediction of the reference latent; for a low-dose start the "noise" is everything
        # in x_t that is not the reference signal, low-dose noise included.
        effective = (xt - a.sqrt() * x0) / (1 - a).sqrt()
        target = a.sqrt() * effective - (1 - a).sqrt() * x0
        cond = torch.where(no_image.view(-1, 1, 1, 1), torch.zeros_like(cond), cond)
        text = torch.where(no_prompt.view(-1, 1, 1), empty, task)
        for group in opt.param_groups:
            group["lr"] = unet_lr(step, settings)
        inputs = [xt, cond]
        if batch.level is not None:
            inputs.append(on(batch.level).view(-1, 1, 1, 1).expand(-1, 1, *xt.shape[-2:]))
        pred = unet(torch.cat(inputs, dim=1), t, text).sample
        # Normalised by the weights' mean, so the step size matches the plain loss (the latent
        # factor is 1, so a pixel mask is a latent mask).
        w = 1 + settings.lesion_weight * on(batch.lesions[:, None]).float()
        if step < settings.unet_steps:
            loss = ((pred - target).pow(2) * w).mean() / w.mean()
        else:
            loss = tuned_loss(pred, target, w, batch.noise_std, settings)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        progress.update(step, float(loss.detach()))
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == total:
            ckpt.save("unet", {"step": step + 1, "model": unet.state_dict(),
                               "ema": ema.state_dict(), "optimizer": opt.state_dict()})
            if validation is not None:
                validation(step + 1, Enhancer(ema, vae, scaling, alphas, task))
    return ema if validation is None else validation.best(ema)


class Enhancer:
    """The runtime's enhancement of the built-in recipe, in torch, for validation during
    training: the image-conditioned img2img start at timestep ``t`` (strength 0.05 of 20 DDIM
    steps runs t = 1 only, the model's own setting), one v-prediction, the clean estimate.
    Guidance 1: the conditional pass alone."""

    def __init__(self, unet, vae, scaling: float, alphas, task, t: int = 1) -> None:
        self.unet, self.vae, self.scaling, self.alphas, self.task, self.t = \
            unet, vae, scaling, alphas, task, t

    def __call__(self, image: np.ndarray, seed: int = 0) -> np.ndarray:
        """(H, W) in the model's [-1, 1] range (sides multiples of 8) -> the same."""
        import torch

        with torch.no_grad():
            cond = encode(self.vae, image[None])
            a = self.alphas[self.t]
            noise = torch.from_numpy(np.random.default_rng(seed).standard_normal(
                cond.shape, dtype=np.float32)).to(cond.device)
            xt = a.sqrt() * cond * self.scaling + (1 - a).sqrt() * noise
            t = torch.full((1,), self.t, device=cond.device)
            v = self.unet(torch.cat([xt, cond], dim=1), t, self.task).sample
            x0 = a.sqrt() * xt - (1 - a).sqrt() * v
            return self.vae.decode(x0 / self.scaling).sample[0, 0].cpu().numpy()


class Validation(Protocol):
    """What ``train_unet`` calls at the start and at each checkpoint (adapt.HeldOut):
    ``__call__(step, enhancer)`` scores the EMA weights and keeps the best; ``best(ema)``
    loads the best into ``ema`` and returns it."""

    def __call__(self, step: int, enhancer: Enhancer) -> None: ...

    def best(self, ema: Any) -> Any: ...


# -- the whole run ------------------------------------------------------------------------
def prompt_embeddings(text_encoder, tokenizer_dir: Path, prompt: str = PROMPT):
    """(empty, task) embeddings, (1, 77, D) each, from the frozen text encoder."""
    import torch

    from scanside.export.checkpoint import read_tokenizer

    tokenizer = read_tokenizer(tokenizer_dir)
    with torch.no_grad():
        return tuple(text_encoder(torch.from_numpy(tokenizer([p]).astype(np.int64)))[0]
                     for p in ("", prompt))


def write_model(parts: dict, tokenizer_dir: Path, out: Path, settings: Settings,
                info: dict[str, Any], folder: str = "model",
                extra_settings: "dict[str, Any] | None" = None) -> Path:
    """The trained model in diffusers' folder format, fp16 safetensors, published atomically
    as OUT/``folder``; ``extra_settings``: more sections for its scanside.json."""
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from scanside.export.checkpoint import SETTINGS_FILE

    model_dir = out / folder
    staging = out / f"{folder}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    pipe = StableDiffusionPipeline(**parts, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(staging, safe_serialization=True)
    # A noise level is estimated at run time as training did: per patch.
    task = ({"enhance": ENHANCE} if settings.task == "denoise" else
            {"task": "segment", "segment": SEGMENT, "labels": list(LESION_LABELS)})
    if settings.concat_scale != 1.0:  # export gives it to the manifest (runtime: unet_condition)
        task["concat_scale"] = settings.concat_scale
    model_settings = {**task, **recipe(settings.recipe).model_settings(settings.patch),
                      **(extra_settings or {})}
    (staging / SETTINGS_FILE).write_text(json.dumps(model_settings, indent=2) + "\n")
    record = {"task": ("low-dose CT denoising" if settings.task == "denoise" else
                       "lesion candidates on low-dose CT") + " (synthetic: "
                      "scanside.training.anatomy, ctsim)",
              "prompt": PROMPT if settings.task == "denoise" else LESION_PROMPT, "settings": asdict(settings), **info, **lineage(settings)}
    (staging / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(staging, model_dir)
    return model_dir


def lineage(settings: Settings) -> dict[str, Any]:
    """For a run from a trained model (``init``): that model's own training.json, so the
    folder says how to remake it from seeds, not only which path it started from."""
    if settings.init is None:
        return {}
    source = Path(settings.init) / "training.json"
    return {"init_training": json.loads(source.read_text()) if source.is_file() else None}


def load_init(parts: dict, folder: Path) -> float:
    """The UNet and text encoder weights of the model in ``folder`` into ``parts`` (float32);
    returns its VAE's latent scale."""
    from safetensors.torch import load_file

    from scanside.errors import InputError

    for name in INIT_PARTS:
        state = {k: v for f in init_weights(folder, name) for k, v in load_file(str(f)).items()}
        if name == "unet":
            state = widen_conv_in(state, parts["unet"])
        try:
            parts[name].load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise InputError(f"{folder / name}: weights do not fit this run's recipe; pass the "
                             f"--recipe that model was trained with ({exc})") from exc
    return float(json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"])


INIT_PARTS = ("unet", "text_encoder")  # what a run from a trained model takes from it


def init_weights(folder: Path, name: str) -> list[Path]:
    """The safetensors files of part ``name`` of the model in ``folder``, or an InputError
    that says what --init takes."""
    from scanside.errors import InputError

    files = sorted((folder / name).glob("*.safetensors"))
    if not files:
        raise InputError(f"{folder / name}: no safetensors weights; --init takes a trained "
                         "model folder such as scanside/default_model/checkpoint")
    return files


def widen_conv_in(state: dict, unet) -> dict:
    """A UNet state dict whose first convolution takes fewer input channels than ``unet``'s
    (ct-default's 8 into ct-noise's 9) with the missing channels' weights set to zero: the
    wider model then computes exactly what the narrower one did, and training starts there."""
    import torch

    key = "conv_in.weight"
    have, want = state.get(key), unet.conv_in.weight
    if have is None or have.shape[1] >= want.shape[1] or have.shape[0] != want.shape[0]:
        return state
    pad = torch.zeros(have.shape[0], want.shape[1] - have.shape[1], *have.shape[2:],
                      dtype=have.dtype)
    log.info("init: conv_in widened from %d to %d input channels (new ones start at zero)",
             have.shape[1], want.shape[1])
    return {**state, key: torch.cat([have, pad], dim=1)}


def same_run(stored: dict, wanted: dict) -> bool:
    """Whether a run folder's settings.json is ``wanted``: a field added to Settings since the
    folder was made counts as equal when it is at its default, and only the patch counts of
    the sources the run uses are compared (a source added since leaves old runs resumable)."""
    defaults = json.loads(json.dumps(asdict(Settings())))
    stored, wanted = used_patches({**defaults, **stored}), used_patches(wanted)
    return all(stored.get(k) == v for k, v in wanted.items()) and set(stored) <= set(wanted)


def used_patches(settings: dict) -> dict:
    """``settings`` (as JSON) with ``patches`` cut to the sources its scenes use."""
    used = {source for source, count in [*settings["scenes"], *settings.get("tune_scenes", ())]
            if count > 0}
    return {**settings, "patches": [[k, n] for k, n in settings["patches"] if k in used]}


def train_default(out: "str | Path", settings: Settings = Settings(),
                  echo: Callable[[str], None] = print, device: str = "cpu", *,
                  data: "Callable[[], dict] | None" = None,
                  validation: "Validation | None" = None, folder: str = "model",
                  extra_settings: "dict[str, Any] | None" = None,
                  info: "dict[str, Any] | None" = None) -> Path:
    """Train (or resume) the default model in ``out`` on torch ``device`` (cpu, cuda[:N]);
    returns the diffusers model folder (OUT/``folder``). The batches are the same on any
    device (numpy draws them); the weights differ between devices only by their rounding.

    ``data``: makes the training patches instead of the anatomy scenes (a site's own slices,
    training/adapt.py); ``validation``: picks the checkpoint; ``extra_settings`` and ``info``:
    more for the model's scanside.json and training.json."""
    import torch

    out = Path(out)
    if settings.task not in TASKS:
        raise ValueError(f"train_default: task {settings.task!r}, expected one of {TASKS}")
    spec: Recipe = recipe(settings.recipe)
    where = use_device(device)
    if settings.init:  # a wrong --init is refused before anything is written or simulated
        for name in INIT_PARTS:
            init_weights(Path(settings.init), name)
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    ckpt = Checkpoints(out / "train")
    settings_file = out / "train" / "settings.json"
    as_json = json.loads(json.dumps(asdict(settings)))  # tuples read back as lists
    if settings_file.is_file() and not same_run(json.loads(settings_file.read_text()), as_json):
        from scanside.errors import InputError

        raise InputError(f"{out}: holds a run with other settings ({settings_file}); resume it "
                         "with the same options or choose a new OUT_DIR")
    settings_file.write_text(json.dumps(asdict(settings), indent=2) + "\n")
    data = load_data(out, settings, echo) if data is None else data()
    tokenizer_dir = out / "train" / "tokenizer"
    vocab_size = write_tokenizer(tokenizer_dir, spec.real_vocab)
    parts = build_components(spec, vocab_size, settings.seed)
    parts["text_encoder"].eval().requires_grad_(False)
    vae, unet = parts["vae"], parts["unet"]
    if settings.task == "lesions":
        # Sampled from pure noise (strength 1): "trailing" spacing starts the loop at t = 999
        # (1 step: 999; 4: 999, 749, 499, 249); "leading" would start a 1-step run at t = 1.
        parts["scheduler"].register_to_config(timestep_spacing="trailing")
    vae.requires_grad_(False).eval()  # the identity, set not learned (identity_vae.py)
    if settings.init:
        if settings.unet_steps:
            raise ValueError("train_default: a run from --init has no phase 1 (unet_steps 0)")
        scaling = load_init(parts, Path(settings.init))
    else:
        scaling = latent_scale(vae, data)
    vae.register_to_config(scaling_factor=scaling)
    embeddings = prompt_embeddings(parts["text_encoder"], tokenizer_dir,
                                   PROMPT if settings.task == "denoise" else LESION_PROMPT)
    parts["unet"] = train_unet(unet, vae, parts["scheduler"], data, embeddings, scaling,
                               settings, ckpt, echo, where, validation).to("cpu")
    parts["vae"] = vae.to("cpu")
    minutes = (time.perf_counter() - started) / 60
    model_dir = write_model(parts, tokenizer_dir, out, settings,
                            {"vae_scaling_factor": scaling,
                             "last_session_minutes": round(minutes, 1),
                             "last_session_device": device_name(where), **(info or {})},
                            folder, extra_settings)
    echo(f"done: {model_dir} ({minutes:.1f} min in this run)")
    return model_dir
