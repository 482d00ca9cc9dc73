"""Training scanside's default model: low-dose CT denoising in Stable Diffusion's architecture.

Three stages, each resumable from its last checkpoint in OUT_DIR/train/:

1. data   synthetic phantom pairs (ctsim): low-dose and full-dose reconstructions in HU;
2. vae    a grayscale AutoencoderKL learns to reconstruct both doses;
3. unet   an image-conditioned UNet learns v-prediction of the full-dose latent, seeing the
          noisy latent concatenated with the low-dose image's latent (instruct-pix2pix's
          layout: unscaled posterior mean, so the export's default concat scale of 1 fits)
          and the task prompt's embedding from a frozen, randomly initialised CLIP text
          encoder (as SD freezes its CLIP). Image and prompt are each dropped for a share of
          samples, so classifier-free guidance works. Its phases narrow to what enhancement
          runs, and the last weighs the phantoms' lesion pixels more (see Settings).

Every random draw of step k comes from a generator seeded by (seed, stage, k), so a run that
resumes from a checkpoint makes exactly the batches an uninterrupted run would have made.
The result is written in diffusers' folder format with fp16 safetensors in OUT_DIR/model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scanside.runtime.images import dihedral  # the scan geometry is rotation-invariant

from . import ctsim
from .recipes import Recipe, RecipeName, build_components, recipe, write_tokenizer

log = logging.getLogger(__name__)
PROMPT = "low-dose CT, denoise"  # the task prompt the default model is trained with
# The settings the model ships with (its scanside.json; the engine's manifest carries them).
# Chosen on the validation split by `scanside models evaluate`, never on the test split.
# Measured on 16 validation pairs after all 7500 UNet steps, one view, strength 0.05 / 0.1 of
# the 20-step schedule: PSNR 43.20 / 43.34 dB, lesions lost 16 / 36 %, lesion contrast error
# 31 / 49 % (input: 36.91 dB, 4 % lost, 31 %; on the 6000-step model 0.15-0.3 lost 72 % and
# scored lower). Strength 0.05 runs the schedule's last step only (t = 1, one UNet
# evaluation): 0.14 dB below 0.1 but it keeps far more lesions, and a denoiser that erases
# lesions is worse than a noisy image. An ensemble of the 8 rotated/mirrored views
# (runtime.images.ENSEMBLE_VIEWS) adds 0.23 dB on validation (43.20 -> 43.43; lesion error
# 31 % both, lost 16 -> 12 %) for 8x the work, 0.8 s per slice on 2 cores; callers who
# need speed pass ensemble=1.
ENHANCE = {"prompt": PROMPT, "strength": 0.05, "steps": 20, "guidance": 1.0, "ensemble": 8}
STAGE_SEED = {"vae": 1, "unet": 2}


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    recipe: str = RecipeName.CT_DEFAULT.value
    train_pairs: int = 2000
    vae_steps: int = 2500
    vae_batch: int = 2  # small batches: measured 4x faster to a given error than 8
    vae_lr: float = 2e-3
    unet_steps: int = 7500
    unet_batch: int = 8
    unet_lr: float = 3e-4
    # Warm restarts: one cosine cycle up to the first, then a cycle per segment at a third of
    # the previous peak (the refined phase was still improving each time the rate had decayed).
    unet_restarts: tuple[int, ...] = (3600, 5000)
    ema_decay: float = 0.999
    drop_image: float = 0.05  # share of samples without the low-dose latent
    drop_prompt: float = 0.05  # ... without the prompt
    drop_both: float = 0.05  # ... without either
    checkpoint_every: int = 100
    workers: int = 2
    # From this UNet step on, training specialises in what enhancement runs: timesteps up to
    # specialise_t, and for a share low_start of samples the diffusion starts from the
    # LOW-dose latent (t >= low_start_t_min), as the runtime's img2img start does, with the
    # full-dose latent as the target. Before it the UNet learns the whole diffusion from the
    # full-dose latent, which alone left low-dose noise in place at low strengths (measured on
    # the first model's run: +0.2 dB at step 1000) and lost detail from pure noise (-2.6 dB).
    specialise_from: int = 1200
    specialise_t: int = 150
    low_start: float = 0.5
    low_start_t_min: int = 40
    # From this step on, the last phase narrows to the few smallest timesteps the default
    # enhancement uses (t <= refine_t, low-dose starts from t = 1): there the scheduler
    # carries the image through x_t and the UNet only predicts the noise to remove, the
    # residual a CT denoiser learns best (measured at step 1600: +1.5 dB, mostly limited
    # by the 120 HU of diffusion noise a t = 49 start adds).
    refine_from: int = 2000
    refine_t: int = 60
    refine_low_start: float = 0.75
    # From this step on the loss weighs lesion pixels (the phantoms' lesion disks, grown by
    # lesion_grow px) lesion_weight times more, on a cosine cycle of its own peaking at
    # lesion_lr. Plain MSE made the model the posterior mean, which shrank lesion contrast to
    # a median 0.62x the reference's: a faint blob in noise is more often noise than lesion,
    # and lesions are 0.7 % of the pixels. Weighting them is training on a prior with more
    # lesions, the trade a reader wants (a missed lesion costs more than a kept blob).
    # Measured on 40 validation pairs (one view, strength 0.05), EMA weights after 1500 steps
    # of it at weight 0 (no phase) / 20 / 60 / 200: 43.34 / 43.42 / 43.38 / 43.29 dB, lesion
    # contrast error 44.1 / 37.8 / 35.1 / 33.8 %, lost 32 / 27 / 25 / 21 %, false blobs 2.00 /
    # 2.23 / 2.40 / 2.42 per image. 200: a lost lesion matters more than 0.1 dB.
    lesion_from: int = 6000
    lesion_weight: float = 200.0
    lesion_grow: float = 1.0
    lesion_lr: float = 3e-5


def specialise(rng: np.random.Generator, t, x0, x0_low: np.ndarray, settings: Settings,
               step: int):
    """(timesteps, start latents) of a specialised batch; see Settings.specialise_from."""
    import torch

    b = len(t)
    if step >= settings.refine_from:
        t_max, t_min_low, share = settings.refine_t, 1, settings.refine_low_start
    else:
        t_max, t_min_low, share = settings.specialise_t, settings.low_start_t_min, settings.low_start
    low = rng.random(b) < share
    t_clean = rng.integers(0, t_max + 1, b)
    t_low = rng.integers(t_min_low, t_max + 1, b)
    t = torch.from_numpy(np.where(low, t_low, t_clean))
    start = torch.where(torch.from_numpy(low).view(-1, 1, 1, 1), torch.from_numpy(x0_low), x0)
    return t, start


def cosine_lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def unet_lr(step: int, settings: Settings) -> float:
    """Cosine cycles between the restarts, each peaking at a third of the one before; the
    lesion-weighted phase has a cycle of its own (Settings.lesion_from)."""
    if step >= settings.lesion_from:
        return cosine_lr(step - settings.lesion_from, settings.unet_steps - settings.lesion_from,
                         settings.lesion_lr, warmup=1)
    last = min(settings.unet_steps, settings.lesion_from)
    edges = (0, *settings.unet_restarts, last)
    for cycle, (start, end) in enumerate(zip(edges, edges[1:])):
        if step < end or end == last:
            if cycle == 0:
                return cosine_lr(step, end, settings.unet_lr)
            return cosine_lr(step - start, end - start, settings.unet_lr / 3**cycle, warmup=1)
    raise AssertionError("unreachable")


class Checkpoints:
    """torch.save of a stage's state, written to a temporary name and renamed into place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str) -> Path:
        return self.folder / f"{stage}.pt"

    def load(self, stage: str) -> "dict[str, Any] | None":
        import torch

        path = self.path(stage)
        return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None

    def save(self, stage: str, state: dict[str, Any]) -> None:
        import torch

        tmp = self.path(stage).with_suffix(".pt.partial")
        torch.save(state, tmp)
        os.replace(tmp, self.path(stage))


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
def load_data(out: Path, settings: Settings, size: int, echo: Callable[[str], None]) -> dict:
    """Train and validation pairs in the model's range, cached in OUT_DIR/train/data.npz."""
    path = out / "train" / "data.npz"
    key = f"{settings.train_pairs}-{size}"
    if path.is_file():
        with np.load(path) as cached:
            if str(cached["key"]) == key:
                return {name: cached[name] for name in ("low", "full")}
    started = time.perf_counter()
    echo(f"data: simulating {settings.train_pairs} phantom pairs at {size} px "
         f"({settings.workers} processes) ...")
    pairs = ctsim.make_pairs(ctsim.split_seeds("train", settings.train_pairs), size,
                             settings.workers)
    data = {"low": np.stack([ctsim.to_model_range(p.low) for p in pairs]),
            "full": np.stack([ctsim.to_model_range(p.full) for p in pairs])}
    tmp = path.with_name("data.partial.npz")
    np.savez(tmp, key=key, **data)
    os.replace(tmp, path)
    echo(f"data: done in {time.perf_counter() - started:.0f} s")
    return data


# -- stage 2: VAE -------------------------------------------------------------------------
def train_vae(vae, data: dict, settings: Settings, ckpt: Checkpoints,
              echo: Callable[[str], None]) -> None:
    import torch

    state = ckpt.load("vae")
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    start = 0
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
    if start >= settings.vae_steps:
        return
    echo(f"vae: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters, "
         f"steps {start}..{settings.vae_steps}")
    full, low = data["full"], data["low"]
    vae.train()
    progress = Progress("vae", settings.vae_steps, start, 20, echo)
    for step in range(start, settings.vae_steps):
        rng = np.random.default_rng([settings.seed, STAGE_SEED["vae"], step])
        # Mostly full-dose images: the decoder's precision on clean images bounds the final
        # PSNR; a quarter low-dose so the encoder also knows the noisy inputs it conditions on.
        pick = rng.choice(len(full), settings.vae_batch, replace=False)
        noisy = rng.random(settings.vae_batch) < 0.25
        batch = np.stack([dihedral((low if n else full)[i], int(rng.integers(8)))
                          for i, n in zip(pick, noisy)])
        x = torch.from_numpy(batch[:, None])
        torch.manual_seed(int(rng.integers(2**31)))
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, settings.vae_steps, settings.vae_lr)
        posterior = vae.encode(x).latent_dist
        # The decoder sees the posterior mean: scanside's concat path and the diffusion target
        # both use the mean, and decoding samples (std starts near 1, far above the signal)
        # made reconstruction error stall at ~45 HU. MSE is the PSNR the model is judged by.
        # The KL term is per latent element, weighted 1e-6 against the per-pixel MSE, as in
        # SD's VAE (whose losses are sums): diffusers' kl() sums over the latent, and that sum
        # at 1e-6 against a *mean* MSE squeezed the latent to std 0.05 and held the error
        # near 27 HU.
        recon = vae.decode(posterior.mode()).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = (recon - x).pow(2).mean() + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        progress.update(step, value, f"  rmse {np.sqrt(value) * 1000:.1f} HU")
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.vae_steps:
            ckpt.save("vae", {"step": step + 1, "model": vae.state_dict(),
                              "optimizer": opt.state_dict()})
    vae.eval()


def encode_all(vae, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Posterior means of (N, H, W) images -> (N, 4, h, w) float32."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch, None]))
            out.append(vae.encode(x).latent_dist.mean.numpy())
    return np.concatenate(out)


def latent_views(seed: int, pairs: int) -> np.ndarray:
    """The rotation/flip (runtime.images.dihedral's k, never 0) of each pair's second latent."""
    return np.random.default_rng([seed, 3]).integers(1, 8, pairs)


def augmented_latents(vae, data: dict, out: Path, seed: int,
                      echo: Callable[[str], None]) -> dict:
    """Latents of every pair as simulated and in one random rotation/flip of it, cached next to
    the checkpoints. (All 8 views at 4x128x128 float32 would be 8 GB for 2000 pairs.)"""
    path = out / "train" / "latents.npz"
    if path.is_file():
        with np.load(path) as cached:
            return {name: cached[name] for name in ("low", "full")}
    started = time.perf_counter()
    views = latent_views(seed, len(data["full"]))
    lat = {}
    for name in ("low", "full"):
        turned = np.stack([dihedral(image, int(k)) for image, k in zip(data[name], views)])
        lat[name] = np.concatenate([encode_all(vae, data[name]), encode_all(vae, turned)])
    tmp = path.with_name("latents.partial.npz")
    np.savez(tmp, **lat)
    os.replace(tmp, path)
    echo(f"latents: {len(lat['full'])} pairs encoded in {time.perf_counter() - started:.0f} s")
    return lat


def lesion_masks(settings: Settings, size: int) -> np.ndarray:
    """(2 * train_pairs, size, size) bool: each pair's lesion disks grown by lesion_grow px, in
    the order and views of augmented_latents. From the phantoms alone (no scan: ~20 ms each);
    the latent factor is 1, so a pixel mask is a latent mask."""
    seeds = ctsim.split_seeds("train", settings.train_pairs)
    masks = np.stack([ctsim.lesion_mask(ctsim.make_phantom(s, size), settings.lesion_grow)
                      for s in seeds])
    turned = np.stack([dihedral(m, int(k))
                       for m, k in zip(masks, latent_views(settings.seed, len(masks)))])
    return np.concatenate([masks, turned])


# -- stage 3: UNet ------------------------------------------------------------------------
def train_unet(unet, scheduler, latents: dict, embeddings, scaling: float, settings: Settings,
               ckpt: Checkpoints, echo: Callable[[str], None],
               lesions: "Callable[[], np.ndarray] | None" = None):
    """Returns the EMA copy of the UNet (the weights that ship). ``lesions`` makes the masks
    of the lesion-weighted phase (Settings.lesion_from) when it is reached."""
    import copy

    import torch

    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=0.0)
    start = 0
    state = ckpt.load("unet")
    if state is not None:
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
    if start >= settings.unet_steps:
        return ema
    echo(f"unet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, "
         f"steps {start}..{settings.unet_steps}")
    alphas = torch.from_numpy(np.asarray(scheduler.alphas_cumprod, dtype=np.float32))
    empty, task = embeddings
    unet.train()
    progress = Progress("unet", settings.unet_steps, start, 20, echo)
    n, b = len(latents["full"]), settings.unet_batch
    masks = None
    for step in range(start, settings.unet_steps):
        if step >= settings.lesion_from and masks is None and lesions is not None:
            masks = lesions()
            echo(f"unet: lesion-weighted from step {settings.lesion_from} "
                 f"(x{settings.lesion_weight:g} on {masks.mean():.2%} of pixels)")
        rng = np.random.default_rng([settings.seed, STAGE_SEED["unet"], step])
        pick = rng.choice(n, b, replace=False)
        x0 = torch.from_numpy(latents["full"][pick]) * scaling
        cond = torch.from_numpy(latents["low"][pick])
        t = torch.from_numpy(rng.integers(0, len(alphas), b))
        noise = torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32))
        u = rng.random(b)  # one draw decides which conditions a sample loses
        no_image = torch.from_numpy((u < settings.drop_image + settings.drop_both))
        lo, hi = settings.drop_image, settings.drop_image + settings.drop_both + settings.drop_prompt
        no_prompt = torch.from_numpy((u >= lo) & (u < hi))
        x_start = x0  # what x_t is noised from (not `start`, the step this run resumed at)
        if step >= settings.specialise_from:  # see Settings.specialise_from
            t, x_start = specialise(rng, t, x0, latents["low"][pick] * scaling, settings, step)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x_start + (1 - a).sqrt() * noise
        # v-prediction of the full-dose latent; for a low-dose start the "noise" is everything
        # in x_t that is not the full-dose signal, low-dose noise included.
        effective = (xt - a.sqrt() * x0) / (1 - a).sqrt()
        target = a.sqrt() * effective - (1 - a).sqrt() * x0
        cond = torch.where(no_image.view(-1, 1, 1, 1), torch.zeros_like(cond), cond)
        text = torch.where(no_prompt.view(-1, 1, 1), empty, task)
        for group in opt.param_groups:
            group["lr"] = unet_lr(step, settings)
        pred = unet(torch.cat([xt, cond], dim=1), t, text).sample
        if masks is None:
            loss = (pred - target).pow(2).mean()
        else:  # normalised by the weights' mean, so the step size matches the plain loss
            w = 1 + settings.lesion_weight * torch.from_numpy(masks[pick][:, None]).float()
            loss = ((pred - target).pow(2) * w).mean() / w.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        progress.update(step, float(loss.detach()))
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.unet_steps:
            ckpt.save("unet", {"step": step + 1, "model": unet.state_dict(),
                               "ema": ema.state_dict(), "optimizer": opt.state_dict()})
    return ema


# -- the whole run ------------------------------------------------------------------------
def prompt_embeddings(text_encoder, tokenizer_dir: Path):
    """(empty, task) embeddings, (1, 77, D) each, from the frozen text encoder."""
    import torch

    from scanside.export.checkpoint import read_tokenizer

    tokenizer = read_tokenizer(tokenizer_dir)
    with torch.no_grad():
        return tuple(text_encoder(torch.from_numpy(tokenizer([p]).astype(np.int64)))[0]
                     for p in ("", PROMPT))


def write_model(parts: dict, tokenizer_dir: Path, out: Path, settings: Settings,
                info: dict[str, Any]) -> Path:
    """The trained model in diffusers' folder format, fp16 safetensors, published atomically."""
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from scanside.export.checkpoint import SETTINGS_FILE

    model_dir = out / "model"
    staging = out / "model.partial"
    shutil.rmtree(staging, ignore_errors=True)
    pipe = StableDiffusionPipeline(**parts, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(staging, safe_serialization=True)
    (staging / SETTINGS_FILE).write_text(json.dumps({"enhance": ENHANCE}, indent=2) + "\n")
    (staging / "training.json").write_text(json.dumps(
        {"task": "low-dose CT denoising (synthetic, scanside.models.ctsim)", "prompt": PROMPT,
         "settings": asdict(settings), **info}, indent=2) + "\n")
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(staging, model_dir)
    return model_dir


def train_default(out: "str | Path", settings: Settings = Settings(),
                  echo: Callable[[str], None] = print) -> Path:
    """Train (or resume) the default model in ``out``; returns the diffusers model folder."""
    import torch

    out = Path(out)
    spec: Recipe = recipe(settings.recipe)
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    ckpt = Checkpoints(out / "train")
    settings_file = out / "train" / "settings.json"
    as_json = json.loads(json.dumps(asdict(settings)))  # tuples read back as lists
    if settings_file.is_file() and json.loads(settings_file.read_text()) != as_json:
        from scanside.errors import InputError

        raise InputError(f"{out}: holds a run with other settings ({settings_file}); resume it "
                         "with the same options or choose a new OUT_DIR")
    settings_file.write_text(json.dumps(asdict(settings), indent=2) + "\n")
    data = load_data(out, settings, spec.sample_size, echo)
    tokenizer_dir = out / "train" / "tokenizer"
    vocab_size = write_tokenizer(tokenizer_dir, spec.real_vocab)
    parts = build_components(spec, vocab_size, settings.seed)
    parts["text_encoder"].eval().requires_grad_(False)
    vae, unet = parts["vae"], parts["unet"]
    train_vae(vae, data, settings, ckpt, echo)
    vae.requires_grad_(False)
    latents = augmented_latents(vae, data, out, settings.seed, echo)
    scaling = float(1.0 / latents["full"].std())
    vae.register_to_config(scaling_factor=scaling)
    embeddings = prompt_embeddings(parts["text_encoder"], tokenizer_dir)
    parts["unet"] = train_unet(unet, parts["scheduler"], latents, embeddings, scaling, settings,
                               ckpt, echo, lambda: lesion_masks(settings, spec.sample_size))
    minutes = (time.perf_counter() - started) / 60
    model_dir = write_model(parts, tokenizer_dir, out, settings,
                            {"vae_scaling_factor": scaling,
                             "last_session_minutes": round(minutes, 1)})
    echo(f"done: {model_dir} ({minutes:.1f} min in this run)")
    return model_dir
