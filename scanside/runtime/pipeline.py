"""The scheduler loop over the exported engines: text-to-image and image enhancement.

Randomness comes from one noise source, drawn in the order diffusers draws from its generator,
so a caller who feeds diffusers' draws reproduces diffusers' pixels:
  enhance (img2img):  VAE posterior sample, then the start noise, then each stochastic step
  enhance (concat):   the start noise (or the pure-noise latents at strength 1), then each step
  generate:           the initial latents, then each stochastic step
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from tqdm.auto import tqdm

from scanside.errors import InputError

from . import images, noise_level, schedulers, segment
from .artifacts import COMPONENTS, TOKENIZER, Conditioning, Manifest, engine_folder, read_manifest
from .default import default_engine_dir
from .engines import Backend, Engine, GpuOptions, open_engine
from .engines.devices import unfit_backends
from .maps import CHANGE_K, MAPS, MIN_VIEWS, Enhanced, Maps, check_k, check_maps, make_maps
from .sampling import DEFAULTS, Sampling, check_consistency, check_guidance, check_seed  # noqa: F401
from .schedulers import Plan, SchedulerName
from .schedulers.lcm import guidance_embedding
from .tiles import Grid, fitted_tile, run_tiled
from .timing import NullTimer, StageTimer
from .tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

NoiseSource = Callable[[tuple[int, ...]], np.ndarray]
Noise = Union[np.ndarray, NoiseSource, None]

# diffusers scheduler classes -> scanside's names, for "the model's own scheduler".
DIFFUSERS_NAMES = {
    "DDIMScheduler": SchedulerName.DDIM, "EulerDiscreteScheduler": SchedulerName.EULER,
    "EulerAncestralDiscreteScheduler": SchedulerName.EULER_A,
    "DPMSolverMultistepScheduler": SchedulerName.DPMPP_2M, "LCMScheduler": SchedulerName.LCM,
    "PNDMScheduler": SchedulerName.PNDM,
}


# The most image pixels (tiles x tile area) one tiled engine call takes: a 1024 px tile alone,
# or sixteen 256 px tiles. One such call of the built-in model peaks at about 1.3 GB.
CALL_PIXELS = 1024 * 1024
ENHANCE_DEFAULTS = DEFAULTS  # its name before scanside.runtime.sampling owned it


def check_noise_conditioned(sampling: Sampling, manifest: Manifest, engine_dir: Path) -> None:
    if sampling.noise_factor not in (None, 1) and not manifest.noise_level:
        raise InputError(f"noise_factor: {engine_dir} is not a noise-conditioned model (it reads "
                         "the noise from the image itself); leave noise_factor at 1")


# Names this module had until scanside 0.1.0, and where they went.
MOVED = {"check_noise_factor": "scanside.runtime.sampling.check_noise_factor (and Pipeline.resolve, "
                               "which checks the model takes it)",
         "Consistency": "scanside.runtime.sampling.Consistency",
         "ConsistencyPx": "scanside.runtime.sampling.ConsistencyPx"}


def __getattr__(name: str) -> object:
    if name in MOVED:
        raise ImportError(f"scanside.runtime.pipeline.{name} moved to {MOVED[name]}")
    raise AttributeError(f"module 'scanside.runtime.pipeline' has no attribute {name!r}")


def without_call_options(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings less those of a call rather than of the sampling (callers of describe
    and fingerprint used to pass enhance's keywords through whole)."""
    return {k: v for k, v in settings.items() if k not in ("progress", "window")}


def not_a_dataset(image: object) -> None:
    """The runtime takes arrays; DICOM datasets belong to scanside.dicom."""
    if type(image).__name__ in ("Dataset", "FileDataset"):
        raise InputError("image: a DICOM dataset; Pipeline.enhance takes pixel arrays now. Use "
                         "scanside.dicom.enhance_dataset(ds, pipeline, sampling, window=...) for "
                         "a derived dataset, or pass ds.pixel_array")


def seeded_noise(seed: int) -> NoiseSource:
    """Standard normal float32 draws from numpy's PCG64; any int is a seed, 0 included."""
    rng = np.random.default_rng(check_seed(seed))
    return lambda shape: rng.standard_normal(shape, dtype=np.float32)


def noise_source(noise: Noise, seed: int, argument: str) -> tuple[Optional[np.ndarray], NoiseSource]:
    """(fixed first draw or None, source for every other draw)."""
    if callable(noise):
        return None, lambda shape: np.asarray(noise(shape), dtype=np.float32)
    if noise is not None and not isinstance(noise, np.ndarray):
        raise InputError(f"{argument}: expected an array or a callable, got {type(noise).__name__}")
    return noise, seeded_noise(seed)


def fixed_draw(fixed: Optional[np.ndarray], draw: NoiseSource, shape: tuple[int, ...],
               argument: str) -> np.ndarray:
    if fixed is None:
        return draw(shape)
    if fixed.shape != shape or fixed.dtype.kind != "f":
        raise InputError(f"{argument}: shape {fixed.shape} dtype {fixed.dtype}, expected "
                         f"float {shape} for this engine")
    return fixed.astype(np.float32)


@dataclass
class Pipeline:
    """Stable-Diffusion-style inference over one engine directory; torch-free."""

    engine_dir: Path
    manifest: Manifest
    tokenizer: ClipTokenizer
    engines: dict[str, Engine]
    backend: Backend
    # A dynamic engine runs an image whole while both sides are at most max_tile pixels, else
    # in max_tile tiles: the memory budget. None: the engine's largest size (its profile).
    max_tile: Optional[int] = None
    # Dynamic engines: the VAE encodes and decodes images larger than vae_tile pixels in
    # tiles of at most vae_tile, one per call, whatever the UNet runs: its full-resolution
    # activations (SD 1.5: 128 channels at 512 px, 134 MB each) set the pipeline's peak
    # memory. None: the VAE runs on the UNet's grid.
    vae_tile: Optional[int] = None
    timer: StageTimer = field(default_factory=NullTimer, repr=False)  # set by benchmarks
    # Held around every engine call on the GPU backends, whose engines keep one set of device
    # buffers: several slices' reading, scheduling and writing still overlap there (workers),
    # their engine calls take turns. ONNX Runtime's CPU sessions run concurrent calls.
    engine_lock: Optional[threading.Lock] = field(default=None, repr=False)
    _embeddings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, engine_dir: Union[str, Path, None] = None, backend: Union[str, Backend] = "cpu",
             *, threads: Optional[int] = None, verify: bool = False,
             max_tile: Optional[int] = None, vae_tile: Optional[int] = None,
             gpu: GpuOptions = GpuOptions()) -> "Pipeline":
        """Open ENGINE_DIR (see ``scanside export``) on ``backend`` ("cpu", "cuda",
        "ort-tensorrt", "tensorrt" or "auto": the fastest present, logged with why the others
        were not); without one, the default low-dose CT model shipped inside the package.
        ``max_tile``, ``vae_tile``: see the attributes (dynamic engines only); ``gpu``: CUDA
        graphs and the low-memory mode of the GPU backends."""
        from scanside.runtime.engines.devices import choose

        engine_dir = default_engine_dir() if engine_dir is None else engine_folder(engine_dir)
        manifest = read_manifest(engine_dir, verify=verify)
        backend, notes = choose(backend, unfit_backends(manifest, engine_dir))
        for note in notes:
            log.info("%s", note)
        tokenizer = ClipTokenizer.from_json(
            json.loads((engine_dir / TOKENIZER).read_text(encoding="utf-8")),
            str(engine_dir / TOKENIZER),
        )
        scratch = None
        if backend is Backend.TENSORRT and gpu.low_memory:
            from scanside.runtime.engines.tensorrt import SharedScratch

            scratch = SharedScratch()
        # A VAE measured to be a per-pixel affine map runs as that map: its graphs stay shut.
        names = [n for n in COMPONENTS if not (manifest.vae_affine and n.startswith("vae_"))]
        engines = {
            name: open_engine(engine_dir, manifest.components[name], manifest.source_hash,
                              backend, threads, gpu, scratch)
            for name in names
        }
        pipe = cls(engine_dir, manifest, tokenizer, engines, backend,
                   engine_lock=None if backend is Backend.CPU else threading.Lock())
        pipe.check_max_tile(max_tile)
        pipe.max_tile = max_tile
        pipe.check_vae_tile(vae_tile)
        pipe.vae_tile = vae_tile
        if backend is Backend.CPU and manifest.tuned_on:
            from .host import host_class

            here = host_class()
            if manifest.tuned_on.get("host_class") != here:
                log.warning("%s: its int8 choices were timed on %s (%s), this CPU is %s; "
                            "re-export it here for the layout fastest on this host",
                            engine_dir, manifest.tuned_on.get("host_class"),
                            manifest.tuned_on.get("cpu"), here)
        return pipe

    # -- tiles ----------------------------------------------------------------------------
    def size_range(self) -> tuple[int, int]:
        """(smallest, largest) side in pixels this engine runs in one call."""
        m = self.manifest
        if not m.dynamic:
            return min(m.height, m.width), max(m.height, m.width)
        low, _, high = self.manifest.components["unet"].spec.ranges["h"]
        return low * m.vae_factor, high * m.vae_factor

    def check_max_tile(self, max_tile: Optional[int]) -> None:
        if max_tile is None:
            return
        low, high = self.size_range()
        d = self.manifest.divisor
        if (not isinstance(max_tile, (int, np.integer)) or max_tile % d
                or not low <= max_tile <= high):
            raise InputError(f"max_tile: {max_tile!r} is not a multiple of {d} within this "
                             f"engine's sizes {low}..{high}; e.g. {min(high, max(low, 512))}")

    def check_vae_tile(self, vae_tile: Optional[int]) -> None:
        if vae_tile is None:
            return
        m = self.manifest
        if not m.dynamic:
            raise InputError(f"vae_tile: {self.engine_dir} is a static {m.height}x{m.width} "
                             "engine, whose VAE takes that size only; re-export it --dynamic")
        low, high = self.size_range()
        if (not isinstance(vae_tile, (int, np.integer)) or vae_tile % m.vae_factor
                or not low <= vae_tile <= high):
            raise InputError(f"vae_tile: {vae_tile!r} is not a multiple of {m.vae_factor} within "
                             f"this engine's sizes {low}..{high}; e.g. {max(low, 256)}")

    def vae_grid(self, height: int, width: int,
                 grid: Optional[Grid]) -> tuple[Optional[Grid], Optional[int]]:
        """(tiles, tiles per call) for the VAE on prepared pixels of this size: ``grid`` (the
        UNet's, as many per call as ``run`` allows) unless vae_tile asks for smaller tiles,
        which go one per call."""
        tile = self.vae_tile
        if tile is None or (height <= tile and width <= tile) or (
                grid is not None and max(grid.tile_h, grid.tile_w) <= tile):
            return grid, None
        f = self.manifest.vae_factor
        # An eighth of vae_tile overlaps each neighbour: the decoder's receptive field is a
        # few latent pixels, and every extra overlap is extra work. The tiles then shrink to
        # the fewest that cover the image at that overlap (512 px with vae_tile 256: 3 x 3
        # tiles of 192 px, 1.27x the pixels, not 3 x 3 of 256 px, 2.25x).
        overlap = max(f, tile // 8 // f * f)
        side = max(fitted_tile(size, tile, overlap, f) for size in (height, width))
        return Grid.plan(height, width, side, side, overlap, f), 1

    def tile_size(self) -> tuple[int, int]:
        m = self.manifest
        if not m.dynamic:
            return m.height, m.width
        side = self.max_tile or self.size_range()[1]
        return side, side

    def grid(self, height: int, width: int) -> Optional[Grid]:
        """Tiles for prepared pixels of this size; None when the engine runs it whole."""
        th, tw = self.tile_size()
        m = self.manifest
        # A dynamic engine's export size is only its tuning point: max_tile decides.
        fits = height <= th and width <= tw if m.dynamic else (height, width) == (th, tw)
        if fits:
            return None
        # A quarter of the tile overlaps each neighbour: wider than the VAE's and the first
        # UNet levels' receptive field, so the zero-padded borders get (almost) no weight.
        overlap = max(m.divisor, min(th, tw) // 4 // m.divisor * m.divisor)
        return Grid.plan(height, width, th, tw, overlap, m.divisor)

    def call(self, engine: Engine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.engine_lock is None:
            return engine.run(feeds)
        with self.engine_lock:
            return engine.run(feeds)

    def run(self, name: str, feeds: dict[str, np.ndarray], grid: Optional[Grid],
            tiled: str, in_scale: int, out_scale: int,
            per_call: Optional[int] = None) -> dict[str, np.ndarray]:
        """One engine call, over ``grid``'s tiles when there is one: ``tiled`` names the
        spatial input; other inputs with a batch axis follow each tile's sample. ``per_call``:
        tiles per call, when not as many as the profile and CALL_PIXELS allow."""
        engine = self.engines[name]
        if grid is None:
            return self.call(engine, feeds)
        spec = self.manifest.components[name].spec
        names = [o.name for o in spec.outputs]
        batch_axis = spec.inputs[0].shape[0]  # "B" or "UB"
        # Tiles share a call up to the profile's batch and CALL_PIXELS: memory grows with a
        # call's pixels (the built-in model held 9.8 GB for 8 tiles of 1024 px in one call).
        if per_call is None:
            per_call = max(1, CALL_PIXELS // (grid.tile_h * grid.tile_w))
        max_batch = min(int(spec.ranges[batch_axis][2]), per_call)
        # Inputs on the batch axis (a guided UNet's prompt halves) follow their tile's sample.
        batched = {t.name for t in spec.inputs if t.shape[0] == batch_axis}

        def call(batch: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
            others = {k: (v[rows] if k in batched else v)
                      for k, v in feeds.items() if k != tiled}
            out = self.call(engine, {tiled: batch, **others})
            return [out[n] for n in names]

        fused = run_tiled(call, feeds[tiled], grid, in_scale, out_scale, max_batch)
        return dict(zip(names, fused))

    # -- building blocks ------------------------------------------------------------------
    def embed(self, prompt: str) -> np.ndarray:
        """(1, 77, D) text embedding, computed once per prompt for the pipeline's life."""
        if not isinstance(prompt, str):
            raise InputError(f"prompt: expected a string, got {type(prompt).__name__}")
        if prompt not in self._embeddings:
            with self.timer.stage("text"):
                ids = self.tokenizer([prompt])  # (1, 77) int32
                out = self.call(self.engines["text_encoder"], {"input_ids": ids})
            self._embeddings[prompt] = out["last_hidden_state"]
        return self._embeddings[prompt]

    def forget_prompts(self) -> None:
        """Drop the cached prompt embeddings (a benchmark times the text encoder each run)."""
        self._embeddings.clear()

    def plan(self, scheduler: Union[str, SchedulerName, None], steps: int, strength: float) -> Plan:
        if scheduler is None:
            own = self.manifest.scheduler_config.get("_class_name", "DDIMScheduler")
            scheduler = DIFFUSERS_NAMES.get(own, SchedulerName.DDIM)
        return schedulers.make_plan(scheduler, self.manifest.scheduler_config, steps, strength,
                                    lcm_distilled=self.guidance_embedding_dim > 0)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.manifest.vae_factor
        return (1, self.manifest.components["unet"].spec.outputs[0].shape[1], height // f, width // f)

    def encode(self, pixels: np.ndarray, grid: Optional[Grid] = None) -> tuple[np.ndarray, np.ndarray]:
        affine = self.manifest.vae_affine
        with self.timer.stage("vae_encode"):
            if affine:  # per pixel: no tiles needed
                e = affine["encode"]
                mean = images.per_pixel_affine(e["weight"], e["bias"], pixels)
                std = np.broadcast_to(np.asarray(e["std"], np.float32)[None, :, None, None],
                                      mean.shape)
                return mean, std
            grid, per_call = self.vae_grid(*pixels.shape[-2:], grid)
            out = self.run("vae_encoder", {"image": pixels}, grid, "image", 1,
                           self.manifest.vae_factor, per_call)
        return out["latent_mean"], out["latent_std"]  # (1, 4, h, w) each

    def decode(self, latents: np.ndarray, grid: Optional[Grid] = None) -> np.ndarray:
        scaled = latents / np.float32(self.manifest.vae_scaling_factor)
        affine = self.manifest.vae_affine
        with self.timer.stage("vae_decode"):
            if affine:
                d = affine["decode"]
                return images.per_pixel_affine(d["weight"], d["bias"], scaled)
            f = self.manifest.vae_factor
            grid, per_call = self.vae_grid(scaled.shape[-2] * f, scaled.shape[-1] * f, grid)
            return self.run("vae_decoder", {"latent": scaled}, grid, "latent", f, 1,
                            per_call)["image"]  # (1, C, H, W)

    check_guidance = staticmethod(check_guidance)  # a method until Sampling owned the check

    @property
    def guidance_embedding_dim(self) -> int:
        """An LCM-distilled UNet's guidance-embedding width (its timestep_cond input), else 0."""
        for t in self.manifest.components["unet"].spec.inputs:
            if t.name == "timestep_cond":
                return int(t.shape[1])
        return 0

    def denoise(self, plan: Plan, latents: np.ndarray, prompt: str, negative_prompt: str,
                guidance: float, draw: NoiseSource, condition: Optional[np.ndarray],
                progress: bool, grid: Optional[Grid] = None) -> np.ndarray:
        """The loop: UNet (both guidance halves in one call), guidance, scheduler step. With
        a grid, every tile's prediction is fused into one before each step (see tiles)."""
        module = schedulers.module_for(plan.algorithm)
        extra, dim = {}, self.guidance_embedding_dim
        if dim:  # LCM-distilled: guidance is an input, not a second half
            extra["timestep_cond"] = guidance_embedding(guidance, dim)
        guided = guidance > 1.0 and not extra
        text = self.embed(prompt)
        if guided:
            text = np.concatenate([self.embed(negative_prompt), text])  # (2, 77, D)
        state: tuple = ()
        for i in tqdm(plan.indices, desc="denoise", disable=not progress, leave=False):
            x = latents / plan.input_divisors[i]  # (1, 4, h, w)
            if condition is not None:
                x = np.concatenate([x, condition], axis=1)  # (1, 8, h, w)
            if guided:
                x = np.concatenate([x, x])  # (2, C, h, w)
            timestep = plan.timesteps[i : i + 1]  # (1,) float32
            with self.timer.stage("unet"):
                out = self.run("unet", {"sample": x, "timestep": timestep,
                                        "encoder_hidden_states": text, **extra},
                               grid, "sample", self.manifest.vae_factor,
                               self.manifest.vae_factor)["out_sample"]
            if guided:
                e_uncond, e_text = out[:1], out[1:]
                out = e_uncond + guidance * (e_text - e_uncond)
            noise = draw(latents.shape) if plan.draws_noise[i] else None
            latents, state = module.step(plan, i, latents, out, state, noise)
        return latents

    # -- public API -----------------------------------------------------------------------
    def generate(self, prompt: str, *, steps: int = 20, guidance: float = 7.5, seed: int = 0,
                 scheduler: Union[str, SchedulerName, None] = None,
                 negative_prompt: Optional[str] = None, latents: Noise = None,
                 height: Optional[int] = None, width: Optional[int] = None,
                 progress: bool = False) -> np.ndarray:
        """Text to image: (H, W, C) float32 in [0, 1]."""
        if self.manifest.conditioning is Conditioning.CONCAT:
            raise InputError("generate: this engine's UNet is image-conditioned; use enhance()")
        check_guidance(guidance)
        height, width = self.image_size(height, width)
        plan = self.plan(scheduler, steps, 1.0)
        fixed, draw = noise_source(latents, seed, "latents")
        x = fixed_draw(fixed, draw, self.latent_shape(height, width), "latents")
        x = x * np.float32(plan.init_noise_sigma)
        with self.timer.stage("loop"):
            x = self.denoise(plan, x, prompt, negative_prompt or "", guidance, draw, None, progress)
        return images.finish(self.decode(x), height, width, gray=False)

    def resolve(self, sampling: Optional[Sampling] = None) -> Sampling:
        """``sampling`` with every unset setting taken from this model's own defaults
        (``enhance_defaults`` in its manifest), else scanside's: what ``enhance`` will use."""
        try:
            resolved = Sampling.of(sampling).resolve(self.manifest.enhance_defaults)
        except InputError as exc:
            if "enhance_defaults" not in str(exc):
                raise
            raise InputError(f"{self.engine_dir / 'manifest.json'}: {exc}; re-export the "
                             "engine with this scanside") from None
        check_noise_conditioned(resolved, self.manifest, self.engine_dir)
        return resolved

    def sampling_defaults(self, **given: object) -> dict[str, object]:
        """The resolved settings as a dict (before ``resolve`` and Sampling existed)."""
        resolved = self.resolve(Sampling.of(**given))
        return {name: getattr(resolved, name) for name in DEFAULTS} | (
            {"seed": resolved.seed} if resolved.seed is not None else {})

    def enhance(self, image: np.ndarray, sampling: Optional[Sampling] = None, *,
                noise: Noise = None, progress: bool = False, **settings: Any) -> np.ndarray:
        """Enhance ``image`` ((H, W) or (H, W, C), [0, 1] floats or uint8/16) -> same layout.

        Plain UNets run img2img (SDEdit): the image's latent is noised to ``strength`` and
        denoised. Image-conditioned UNets also see the image's latent at every step. How:
        ``sampling`` (see scanside.Sampling; unset settings take the model's own). The keyword
        settings of earlier versions (``strength=0.1``, ...) still work in its place.
        ``noise``: the start noise (an array of the latent shape) or a function drawing every
        noise array, instead of the seed's draws. DICOM datasets go through
        scanside.dicom.enhance_dataset.
        """
        not_a_dataset(image)
        if settings.pop("window", None) is not None:
            raise InputError("window: a DICOM setting; Pipeline.enhance takes arrays already in "
                             "[0, 1]. Use scanside.dicom.enhance_dataset(ds, pipeline, sampling, "
                             "window=...)")
        return self.run_enhance(image, Sampling.of(sampling, **settings), (), noise,
                                progress).image

    def enhance_maps(self, image: np.ndarray, sampling: Optional[Sampling] = None,
                     maps: Union[str, Sequence[str]] = MAPS, *, noise: Noise = None,
                     progress: bool = False, change_k: float = CHANGE_K) -> Enhanced:
        """``enhance`` and the maps of what it did (scanside.runtime.maps): "uncertainty",
        the spread of the predictions over at least MIN_VIEWS views (views the ensemble does
        not average run for the map alone: with ensemble 1 the map costs 3 more model runs,
        and the enhanced image is the one ``enhance`` returns), times the model's calibration;
        "change", enhanced - input and the mask of where it exceeds ``change_k`` times the
        local noise. Returns Enhanced(image, maps), maps in the image's [0, 1] units."""
        not_a_dataset(image)
        names = check_maps(maps)
        if not names:
            raise InputError("maps: none asked for; choose from " + ", ".join(MAPS)
                             + " (or call enhance)")
        check_k(change_k)
        return self.run_enhance(image, Sampling.of(sampling), names, noise, progress, change_k)

    def map_views(self, sampling: Optional[Sampling] = None) -> int:
        """How many views an uncertainty map with ``sampling`` runs (its cost in model runs
        per image, against ``ensemble`` without it)."""
        s = self.resolve(Sampling.of(sampling))
        return max(len(images.ensemble_views(s.ensemble)), MIN_VIEWS)

    def run_enhance(self, image: np.ndarray, sampling: Sampling, names: tuple[str, ...],
                    noise: Noise, progress: bool, change_k: float = CHANGE_K) -> Enhanced:
        self.check_task("enhance")
        s = self.resolve(sampling)
        prepared = self.prepare(image)
        views = images.ensemble_views(s.ensemble)
        m = self.manifest
        if len(views) == 8 and not m.dynamic and m.height != m.width:
            raise InputError(f"ensemble: 8 views include quarter turns, which a static "
                             f"{m.height}x{m.width} engine cannot take; use 4 (mirrors and half "
                             "turns), or export the engine square or --dynamic")
        plan = self.plan(s.scheduler, s.steps, s.strength)
        level = self.noise_channel(prepared.pixels, s.noise_factor)  # one value for every view

        def view(k: int, seed: int) -> np.ndarray:
            return images.undo_dihedral(self.enhance_pixels(
                images.dihedral(prepared.pixels, k), plan, s.prompt, s.negative_prompt or "",
                s.guidance, noise, seed, progress, level), k)

        decoded = [view(k, s.seed_value) for k in views]
        # Views for the uncertainty map alone, each with a seed of its own; the ensemble's
        # views keep their seed, so the image is what enhance() returns.
        extra = [k for k in images.ensemble_views(MIN_VIEWS) if k not in views] \
            if "uncertainty" in names else []
        if extra:
            log.info("uncertainty map: %d more view(s) than the ensemble's %d (%.1fx its model "
                     "time)", len(extra), len(views), (len(views) + len(extra)) / len(views))
        mean = decoded[0] if len(decoded) == 1 else np.mean(decoded, axis=0)
        finish = lambda d: images.finish(d, prepared.height, prepared.width, prepared.gray)  # noqa: E731
        source = finish(prepared.pixels)
        out = self.consistent(finish(mean), source, s)
        if not names:
            return Enhanced(out, Maps(0))
        predictions = [self.consistent(finish(d), source, s) for d in
                       decoded + [view(k, s.seed_value + 1 + j) for j, k in enumerate(extra)]]
        return Enhanced(out, make_maps(names, out, source, predictions,
                                       (m.maps or {}).get("uncertainty"), change_k))

    @staticmethod
    def consistent(out: np.ndarray, source: np.ndarray, s: Sampling) -> np.ndarray:
        """``out`` with the data consistency ``s`` asks for (none by default)."""
        fine, coarse = s.consistency
        return images.keep_low_frequencies(out, source, fine, coarse) if fine else out

    def check_task(self, wanted: str) -> None:
        """Refuse an engine made for another task (a segmentation engine given to enhance)."""
        task = self.manifest.task
        if task != wanted:
            noun = {"segment": "a segmentation", "enhance": "an enhancement"}
            use = {"segment": "scanside segment / Pipeline.segment",
                   "enhance": "scanside enhance / Pipeline.enhance"}[task]
            raise InputError(f"engine: {self.engine_dir} is {noun[task]} engine (task {task!r} "
                             f"in its manifest), not one that can {wanted}; use {use} with it, "
                             f"or give {noun[wanted]} engine")

    # -- segmentation (runtime/segment.py) ----------------------------------------------
    def segment_settings(self, sampling: Optional[Sampling] = None, seeds: Optional[int] = None,
                         threshold: Optional[float] = None) -> tuple[Sampling, int, float]:
        """(sampling, seeds, threshold) a segmentation with these arguments uses: each unset
        one from the model's own segment_defaults, else scanside's."""
        self.check_task("segment")
        settings, own_seeds, own_threshold = segment.split_defaults(self.manifest.segment_defaults)
        try:
            s = Sampling.of(sampling).resolve(settings)
        except InputError as exc:
            raise InputError(f"{self.engine_dir / 'manifest.json'}: segment_defaults: {exc}; "
                             "re-export the engine with this scanside") from None
        return (s, segment.resolve_seeds(seeds, own_seeds),
                own_threshold if threshold is None else segment.check_threshold(threshold))

    def segment(self, image: np.ndarray, sampling: Optional[Sampling] = None, *,
                seeds: Optional[int] = None, threshold: Optional[float] = None,
                progress: bool = False) -> "segment.Segmented":
        """Segment ``image`` ((H, W) or (H, W, C), [0, 1] floats or uint8/16) with a
        segmentation engine (task "segment" in its manifest): ``seeds`` mask samples per
        ensemble view, each from its own start noise, through the scheduler loop; their mean
        is the probability, their spread its uncertainty, the mask where the probability
        exceeds ``threshold`` (both default to the model's own settings)."""
        not_a_dataset(image)
        s, seeds, threshold = self.segment_settings(sampling, seeds, threshold)
        prepared = self.prepare(image)
        plan = self.plan(s.scheduler, s.steps, s.strength)
        samples = []
        for k in images.ensemble_views(s.ensemble):
            for j in range(seeds):
                decoded = images.undo_dihedral(self.enhance_pixels(
                    images.dihedral(prepared.pixels, k), plan, s.prompt,
                    s.negative_prompt or "", s.guidance, None, s.seed_value + j, progress), k)
                samples.append(images.finish(decoded, prepared.height, prepared.width, True))
        return segment.combine(samples, threshold)

    def describe_segment(self, sampling: Optional[Sampling] = None, seeds: Optional[int] = None,
                         threshold: Optional[float] = None) -> str:
        """Provenance of a segmentation, for the SEG's and SR's descriptions."""
        from scanside import __version__

        s, seeds, threshold = self.segment_settings(sampling, seeds, threshold)
        plan = self.plan(s.scheduler, s.steps, s.strength)
        views = len(images.ensemble_views(s.ensemble))
        return (f"scanside {__version__} diffusion segmentation; model sha256 "
                f"{self.manifest.source_hash[:16]}; {self.manifest.precision.value}; backend "
                f"{self.backend.value}; {s.schedule_text(plan.algorithm)}; {views} view(s) x "
                f"{seeds} seed(s), mean > {threshold:g}")

    def segment_fingerprint(self, sampling: Optional[Sampling] = None,
                            seeds: Optional[int] = None, threshold: Optional[float] = None) -> str:
        """sha256 of what decides a segmentation (see fingerprint): the SEG's UIDs."""
        import hashlib

        s, seeds, threshold = self.segment_settings(sampling, seeds, threshold)
        base = self.fingerprint_of(s, None)
        return hashlib.sha256(f"{base}|segment {seeds} {threshold!r}".encode()).hexdigest()

    def enhance_pixels(self, pixels: np.ndarray, plan: Plan, prompt: str, negative_prompt: str,
                       guidance: float, noise: Noise, seed: int, progress: bool,
                       level: Optional[float] = None) -> np.ndarray:
        """Prepared (1, C, H, W) pixels -> the decoder's output for them (``level``: a
        noise-conditioned UNet's noise channel, see noise_channel)."""
        module = schedulers.module_for(plan.algorithm)
        fixed, draw = noise_source(noise, seed, "noise")
        grid = self.grid(*pixels.shape[-2:])
        mean, std = self.encode(pixels, grid)
        sf = np.float32(self.manifest.vae_scaling_factor)
        condition = self.unet_condition(pixels, mean, level)
        if condition is not None:
            x0 = mean * sf
        else:
            x0 = (mean + std * draw(mean.shape)) * sf  # a sample of the VAE posterior
        start_noise = fixed_draw(fixed, draw, x0.shape, "noise")
        if condition is not None and plan.start == 0:
            x = start_noise * np.float32(plan.init_noise_sigma)  # strength 1: from pure noise
        else:
            x = module.add_noise(plan, x0, start_noise).astype(np.float32)
        with self.timer.stage("loop"):
            x = self.denoise(plan, x, prompt, negative_prompt, guidance, draw, condition,
                             progress, grid)
        return self.decode(x, grid)

    def noise_channel(self, pixels: np.ndarray, noise_factor: float = 1.0) -> Optional[float]:
        """A noise-conditioned UNet's noise channel for prepared (1, C, H, W) pixels: the noise
        level estimated from the whole image (so tiles agree) times the model's scale and
        ``noise_factor``; None for other UNets."""
        spec = self.manifest.noise_level
        return noise_level.channel_value(pixels, spec, noise_factor) if spec else None

    def unet_condition(self, pixels: np.ndarray, mean: np.ndarray,
                       level: Optional[float] = None) -> Optional[np.ndarray]:
        """What a conditioned UNet sees beside its noisy latent, for prepared (1, C, H, W)
        ``pixels`` whose latent mean is ``mean``: the image's latent (image-conditioned) and,
        for a noise-conditioned UNet, its noise channel (``level``, else estimated from
        ``pixels``). None for a text-only UNet."""
        m = self.manifest
        if m.conditioning is not Conditioning.CONCAT:
            return None
        condition = mean * np.float32(m.concat_scale)
        if m.noise_level:
            value = self.noise_channel(pixels) if level is None else level
            channel = np.full((1, 1, *mean.shape[-2:]), value, dtype=np.float32)
            condition = np.concatenate([condition, channel], axis=1)
        return condition

    def prepare(self, image: np.ndarray) -> "images.Prepared":
        """``image`` as this engine's pixels: channels, padded to the engine's divisor and at
        least its smallest size (larger images run in tiles)."""
        m = self.manifest
        low = self.size_range()[0]
        min_hw = (low, low) if m.dynamic else (m.height, m.width)
        return images.prepare(image, m.image_channels, min_hw, m.divisor)

    def reconstruct(self, image: np.ndarray) -> np.ndarray:
        """``image`` through the VAE alone (encode, posterior mean, decode), in its layout:
        the closest any enhancement by this engine can come to it."""
        prepared = self.prepare(image)
        grid = self.grid(*prepared.pixels.shape[-2:])
        mean, _ = self.encode(prepared.pixels, grid)
        decoded = self.decode(mean * np.float32(self.manifest.vae_scaling_factor), grid)
        return images.finish(decoded, prepared.height, prepared.width, prepared.gray)

    def describe(self, sampling: Optional[Sampling] = None, **settings: Any) -> str:
        """Provenance of an enhancement with ``sampling``, for DICOM's DerivationDescription."""
        from scanside import __version__

        s = self.resolve(Sampling.of(sampling, **without_call_options(settings)))
        plan = self.plan(s.scheduler, s.steps, s.strength)
        m = self.manifest
        views = s.views_text()
        if m.noise_level:  # the model was told the image's own noise level, or a multiple
            views += (f"; noise level estimated from the image ({m.noise_level['estimator']})"
                      + (f" x {s.noise_factor:g}" if s.noise_factor != 1 else ""))
        if m.tiny_vae:  # a reader of the DICOM should know the pixels went through TAESD
            views += (f"; tiny VAE sha256 {m.tiny_vae['source_hash'][:16]} for "
                      f"{'+'.join(m.tiny_vae['components'])}")
        return (f"scanside {__version__} diffusion enhancement; model sha256 {m.source_hash[:16]}; "
                f"{m.precision.value}; backend {self.backend.value}; "
                f"{s.schedule_text(plan.algorithm)}{views}; prompt {s.prompt!r}")

    def fingerprint(self, sampling: Optional[Sampling] = None, *, noise: Noise = None,
                    **settings: Any) -> str:
        """sha256 of everything that decides what ``enhance(image, sampling)`` computes: the
        engine's ONNX files (their manifest hashes), the backend, the tiling budget, the
        settings as resolved against the model's defaults, and scanside's version. Derived
        DICOM UIDs come from it. '' when the noise is a caller's function, which cannot be
        identified."""
        if callable(noise):
            return ""
        return self.fingerprint_of(
            self.resolve(Sampling.of(sampling, **without_call_options(settings))), noise)

    def fingerprint_of(self, s: Sampling, noise: Optional[np.ndarray]) -> str:
        """``fingerprint`` of resolved settings ``s``."""
        import hashlib

        from scanside import __version__

        algorithm = self.plan(s.scheduler, s.steps, s.strength).algorithm
        m = self.manifest
        identity = {"scanside": __version__, "backend": self.backend.value,
                    "max_tile": self.max_tile, "settings": s.identity(algorithm),
                    "components": {name: c.sha256 for name, c in sorted(m.components.items())},
                    "vae_affine": m.vae_affine,
                    "noise": (hashlib.sha256(np.ascontiguousarray(noise)).hexdigest()
                              if noise is not None else None)}
        if self.vae_tile and not m.vae_affine:  # only when set: existing UIDs stay as they were
            identity["vae_tile"] = self.vae_tile
        text = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def image_size(self, height: Optional[int], width: Optional[int]) -> tuple[int, int]:
        m = self.manifest
        height, width = height or m.height, width or m.width
        if not m.dynamic and (height, width) != (m.height, m.width):
            raise InputError(f"height/width: {height}x{width}, this engine was exported for "
                             f"{m.height}x{m.width}; re-export with --height/--width or --dynamic")
        if height % m.divisor or width % m.divisor:
            raise InputError(f"height/width: {height}x{width} is not a multiple of {m.divisor} "
                             "(this engine's VAE factor x 2 ** UNet downsamplings)")
        return height, width
