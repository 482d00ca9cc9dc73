"""`scanside models adapt`: fit the built-in model (or another) to a site's own scanner.

The site's routine-dose slices are made into training pairs exactly as the built-in model's
were (``train.scan_patches``): each slice, at its own pixel size, projected once and
reconstructed at a near-noiseless reference dose and at low doses of random noise level
(the base model's range, 15-90 HU in soft tissue), with faint lesions drawn into its flat
soft tissue first so the lesion-weighted loss keeps working. The reference is the site's slice
as its scanner made it (with its own noise and texture): the model learns to take away the
*added* dose noise and keep what the site's kernel shows.

- **Split by study**: whole studies are held out (``--holdout``, default 20 %), so neither a
  series nor another reconstruction of its acquisition is on both sides; one study: whole
  series; a single series: a block of its last slices, and the card says the figures are
  optimistic (neighbouring slices).
- **Training**: phase 2 of ``train.train_default`` from the base model's weights, at its
  learning rate (ADAPT_LR), on the site's patches; resumable from OUT/train/ every
  CHECKPOINT_EVERY steps; every random draw follows ``--seed``. Steps default from the amount
  of data (``plan``) and are printed.
- **Choice**: at the start and at each checkpoint the EMA weights enhance held-out slices at
  20/40/80 HU (the runtime's one step, in torch); of the checkpoints nowhere below the start,
  the best mean PSNR ships (``HeldOut``), the step it came from is recorded.
- **Output**: MODEL_DIR/checkpoint (diffusers), MODEL_DIR/engine (fp32 ONNX: ``--engine
  MODEL_DIR`` and ``Pipeline.load(MODEL_DIR)`` take the folder), MODEL_DIR/README.md and
  card.json: the data (counts, scanner models, kernels, kV, pixel sizes; never a name, ID, date,
  UID or path), the site evaluation of base vs adapted vs BM3D on the held-out series, the
  settings and the time. The model is derived from patient images: its scanside.json, manifest,
  card and ``scanside info`` say it stays on site.
"""

from __future__ import annotations

import errno
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from scanside.errors import InputError, OutputError

from . import anatomy, siteeval
from .site import SiteScans, SiteSeries, left_out_counts, spread

# The base model's phase-2 peak. 5e-5 (half) was tried first: on invesalius-head (one series,
# 80 training slices) it reached 46.78 / 43.23 / 38.77 dB at 20 / 40 / 80 HU after 100 steps
# where 1e-4 reached 46.96 / 43.37 / 38.88, and it flattened out by step 500 (43.39 dB mean);
# the checkpoint choice guards against overshooting.
ADAPT_LR = 1e-4
HOLDOUT = 0.2
CHECKPOINT_EVERY = 100
FEW_SLICES = 50  # below this, the model may learn the slices more than the scanner
MAX_TRAIN_SLICES = 80  # slices simulated for training, spread over the training series
VALIDATION_SLICES = 6  # held-out slices that choose the checkpoint
CARD_SLICES = 8  # held-out slices of the card's evaluation (BM3D dominates its time)
TARGET_PATCHES = 256  # doses per slice are raised until the data has about this many patches
LESIONS = 1.0  # per 128x128 px of flat soft tissue, drawn into the training slices
LESION_STREAM = 11
PROVENANCE = {
    "derived_from_patient_images": True,
    "statement": "adapted on a site's own patient scans: keep it on site (do not publish or "
                 "share it outside the institution that holds the scans)",
}


@dataclass(frozen=True)
class Plan:
    steps: int
    doses: int  # low doses simulated per training slice
    per_dose: int  # patches cut from each
    batch: int
    train_slices: int
    split: str  # how the held-out data was chosen

    def text(self) -> str:
        return (f"{self.steps} steps of batch {self.batch}; {self.train_slices} training "
                f"slice(s) x {self.doses} doses x {self.per_dose} patch(es); {self.split}")


def plan_steps(train_slices: int) -> int:
    """Steps from the amount of data: 300 for a phantom's few slices, 5 more per slice, at
    most 800 (~12 min on a 2-core CPU): the held-out checkpoint choice stops overfitting
    earlier when it helps."""
    return int(np.clip(200 + 5 * train_slices, 300, 800))


def patches_per_dose(side: int, patch: int) -> int:
    return int(np.clip((side // patch) ** 2 // 2, 1, 8))


def split_series(scans: SiteScans, holdout: float, seed: int
                 ) -> tuple[list[SiteSeries], list[SiteSeries], str]:
    """(training series, held-out series, how). Whole studies are held out, chosen by
    ``seed``, so two reconstructions of one acquisition never fall on both sides; with one
    study, whole series of it; with one series, its last slices (ceil(holdout x n), after a
    gap of one slice when it can)."""
    if not 0 <= holdout < 1:
        raise InputError(f"holdout: {holdout:g} is not in [0, 1); e.g. 0.2 holds out a fifth "
                         "of the series")
    series = list(scans.series)
    if holdout == 0:
        return series, [], "nothing held out (holdout 0): the last checkpoint ships, unmeasured"
    groups = list(dict.fromkeys(s.group or s.key for s in series))
    if len(groups) >= 2:
        order = np.random.default_rng([seed, 5]).permutation(len(groups))
        count = max(1, min(len(groups) - 1, int(round(holdout * len(groups)))))
        held_groups = {groups[i] for i in order[:count]}
        held = [s for s in series if (s.group or s.key) in held_groups]
        return ([s for s in series if (s.group or s.key) not in held_groups], held,
                f"{len(held)} of {len(series)} series held out ({count} of {len(groups)} "
                "studies: never series of one study on both sides)")
    if len(series) >= 2:
        order = np.random.default_rng([seed, 5]).permutation(len(series))
        count = max(1, min(len(series) - 1, int(round(holdout * len(series)))))
        pick = set(order[:count].tolist())
        return ([s for i, s in enumerate(series) if i not in pick],
                [s for i, s in enumerate(series) if i in pick],
                f"{count} of {len(series)} series held out, all of one study (the same "
                "patient on both sides: the held-out figures are optimistic)")
    only = series[0]
    n = len(only.slices)
    if n < 2:
        return series, [], "nothing held out (one slice): the last checkpoint ships, unmeasured"
    held_count = max(1, int(math.ceil(holdout * n)))
    gap = 1 if n - held_count >= 3 else 0  # a neighbour of a held-out slice is left out
    train = replace(only, slices=only.slices[: n - held_count - gap])
    test = replace(only, slices=only.slices[n - held_count:])
    return ([train], [test], f"one series: its last {held_count} of {n} slices held out"
            + (" after a gap of one" if gap else "") + " (neighbouring slices of one series: "
            "the held-out figures are optimistic)")


def spread_slices(series: list[SiteSeries], count: int) -> list[tuple[SiteSeries, Any]]:
    """At most ``count`` (series, slice) pairs spread evenly over all slices of ``series``."""
    every = [(s, sl) for s in series for sl in s.slices]
    return [every[i] for i in spread(len(every), count)]


def slice_job(job: tuple) -> dict[str, np.ndarray]:
    """One training slice's patches (``train.scan_patches``), lesions drawn in first."""
    from . import ctsim, train

    hu, pixel_mm, key, settings, per_dose, doses, lesions = job
    square = ctsim.square(hu)
    if square.shape[0] < settings.patch:  # a small slice: padded with air to one patch
        square = ctsim.square(np.pad(square, (0, settings.patch - square.shape[0]),
                                     constant_values=-1000.0))
    drawn: tuple = ()
    if lesions:
        square, drawn = anatomy.draw_lesions(
            square, np.random.default_rng(key + [LESION_STREAM]), lesions,
            tuple(r / pixel_mm for r in anatomy.LESION_MM), siteeval.LESION_CONTRAST_HU,
            siteeval.LESION_SMOOTH_PX)
    return train.scan_patches(square, pixel_mm, drawn, np.random.default_rng(key), settings,
                              per_dose, doses)


class SiteData:
    """The training patches, one file per slice in OUT/train/slices/: an interrupted run
    simulates only what is missing."""

    def __init__(self, out: Path, picks: list, settings: Any, plan: Plan, workers: int,
                 echo: Callable[[str], None]) -> None:
        self.folder, self.picks, self.settings = out / "train" / "slices", picks, settings
        self.plan, self.workers, self.echo = plan, workers, echo

    def __call__(self) -> dict:
        from .train import save_scene, scene_file

        started = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        jobs = [(s.hu, s.pixel_mm, [self.settings.seed, series.index, s.position],
                 self.settings, patches_per_dose(max(s.hu.shape), self.settings.patch),
                 self.plan.doses, LESIONS) for series, s in self.picks]
        names = [("site", k, None) for k in range(len(jobs))]
        todo = [k for k, name in enumerate(names) if not scene_file(self.folder, name).is_file()]
        self.echo(f"data: simulating {len(todo)} of {len(jobs)} training slice(s) "
                  f"({self.workers} process(es)) ...")
        for done, (k, part) in enumerate(zip(todo, siteeval.map_jobs(
                slice_job, [jobs[k] for k in todo], self.workers)), 1):
            save_scene(self.folder, names[k], part)
        parts = []
        for name in names:
            with np.load(scene_file(self.folder, name), allow_pickle=False) as part:
                parts.append({n: part[n] for n in ("low", "full", "lesions")})
        data = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        data["phase1"] = len(data["full"])
        self.echo(f"data: {len(data['full'])} patch pairs in {time.perf_counter() - started:.0f} s")
        if len(data["full"]) < self.settings.unet_batch:
            raise InputError(f"adapt: {len(data['full'])} patches, fewer than a batch "
                             f"({self.settings.unet_batch}); give more slices")
        return data


class HeldOut:
    """Chooses the checkpoint: the runtime's enhancement (``train.Enhancer``) of held-out
    slices at every noise level. A checkpoint qualifies when it is nowhere below the starting
    weights (step 0) by more than TOLERANCE_DB at any level (a site must never lose at the
    dose it scans at to gain at another); of those, the best mean PSNR over the levels ships.
    The best weights are kept in OUT/train/best.safetensors, the history in
    OUT/train/validation.json."""

    TOLERANCE_DB = 0.05  # about the spread of a level's mean PSNR between noise draws here

    def __init__(self, out: Path, pairs: list, echo: Callable[[str], None]) -> None:
        from .train import Checkpoints

        self.pairs, self.echo = pairs, echo
        self.ckpt = Checkpoints(out / "train")
        self.history_file = out / "train" / "validation.json"
        self.history: list[dict] = (json.loads(self.history_file.read_text())
                                    if self.history_file.is_file() else [])

    def qualifies(self, by_level: dict[str, float]) -> bool:
        start = next((h["by_noise_hu"] for h in self.history if h["step"] == 0), None)
        return start is None or all(by_level[k] >= start[k] - self.TOLERANCE_DB for k in start)

    def __call__(self, step: int, enhancer: Any) -> None:
        from . import ctsim, evaluate

        if not self.pairs:
            return
        scores: dict[float, list[float]] = {}
        for k, pair in enumerate(self.pairs):
            image = padded(ctsim.to_model_range(pair.low))
            out = enhancer(image, seed=k)[: pair.low.shape[0], : pair.low.shape[1]] * 1000.0
            scores.setdefault(pair.noise_hu, []).append(evaluate.psnr(pair.full, out))
        by_level = {f"{k:g}": round(float(np.mean(v)), 3) for k, v in scores.items()}
        mean = float(np.mean(list(by_level.values())))
        self.history = [h for h in self.history if h["step"] < step]
        best = max((h["psnr_db"] for h in self.history if h.get("qualifies", True)),
                   default=-np.inf)
        ok = self.qualifies(by_level)
        self.history.append({"step": step, "psnr_db": round(mean, 3), "by_noise_hu": by_level,
                             "qualifies": ok})
        # The history first: a crash before the weights leaves the old best with its own step.
        save_json(self.history_file, self.history)
        chosen = ok and mean > best
        if chosen:
            self.ckpt.save("best", {"step": step, "ema": enhancer.unet.state_dict()})
        levels = ", ".join(f"{k} HU {v:.2f}" for k, v in by_level.items())
        self.echo(f"held-out step {step}: {mean:.2f} dB ({levels})" + (" best" if chosen else "")
                  + ("" if ok else " (below the start at some level: not a candidate)"))

    def best(self, ema):
        state = self.ckpt.load("best") if self.pairs else None
        if state is None:
            return ema
        ema.load_state_dict(state["ema"])
        self.echo(f"chosen: the weights of step {state['step']} (best on the held-out slices"
                  + ("; adapting did not improve on the base model there)" if state["step"] == 0
                     else ")"))
        return ema

    def chosen_step(self) -> Optional[int]:
        """The step of the weights that ship (the best checkpoint's own record)."""
        state = self.ckpt.load("best") if self.pairs else None
        return None if state is None else int(state["step"])


def padded(image: np.ndarray, multiple: int = 8) -> np.ndarray:
    """Edge-padded to sides that are multiples of ``multiple`` (the UNet's divisor)."""
    h, w = image.shape
    return np.pad(image, ((0, -h % multiple), (0, -w % multiple)), mode="edge")


def base_settings(base: Path) -> dict[str, Any]:
    """The base model's training settings (its training.json), or the defaults."""
    from .train import Settings

    record = base / "training.json"
    stored = json.loads(record.read_text()).get("settings", {}) if record.is_file() else {}
    known = set(asdict(Settings()))
    return {k: v for k, v in stored.items() if k in known}


def adapt(scans: SiteScans, out: "str | Path", *, base: "str | Path | None" = None,
          steps: Optional[int] = None, seed: int = 0, device: str = "cpu",
          holdout: float = HOLDOUT, workers: int = 2, bm3d: bool = True,
          bm3d_profile: str = siteeval.BM3D_PROFILE, lr: float = ADAPT_LR,
          ensemble: Optional[int] = None, echo: Callable[[str], None] = print) -> Path:
    """Adapt ``base`` (default: the built-in model) to ``scans``; writes the model folder
    ``out`` (see the module docstring) and returns it; ``bm3d``/``bm3d_profile``: BM3D in the
    card's evaluation (siteeval.evaluate_site); ``ensemble``: the views the adapted model
    averages by default (its manifest's enhance_defaults; None: the base model's own), and
    those the card measures both models at. A full disk raises OutputError (exit 3); the same
    call resumes."""
    from scanside.runtime.sampling import check_ensemble

    from .evaluate import check_bm3d_profile

    check_bm3d_profile(bm3d_profile)
    if ensemble is not None:
        check_ensemble(ensemble)
    try:
        return _adapt(scans, Path(out), base, steps, seed, device, holdout, workers, bm3d,
                      bm3d_profile, lr, ensemble, echo)
    except Exception as exc:
        if disk_full(exc):
            raise OutputError(f"{out}: the disk is full ({exc}); free space and run the same "
                              "command again: it resumes from the last checkpoint") from None
        raise


FULL_MESSAGES = ("no space left", "os error 28", "disk quota", "file too large")


def disk_full(exc: BaseException) -> bool:
    """An OSError of a full disk or quota, or the same from a library that wraps it in its own
    type (safetensors raises SafetensorError "I/O error: No space left on device (os error 28)")."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    return type(exc).__name__ == "SafetensorError" and any(
        m in str(exc).lower() for m in FULL_MESSAGES)


def save_json(path: Path, value: Any) -> None:
    """``value`` as JSON at ``path``, atomically: a full disk leaves the old file whole."""
    from scanside.files import write_json

    write_json(path, value)


def _adapt(scans: SiteScans, out: Path, base: "str | Path | None", steps: Optional[int],
           seed: int, device: str, holdout: float, workers: int, bm3d: bool,
           bm3d_profile: str, lr: float, ensemble: Optional[int],
           echo: Callable[[str], None]) -> Path:
    from scanside.export.checkpoint import read_enhance_defaults
    from scanside.runtime.default import default_checkpoint_dir
    from scanside.runtime.sampling import Sampling

    from .recipes import recipe
    from .train import ENHANCE, Settings, train_default, use_device

    started = time.perf_counter()
    base = Path(base) if base is not None else default_checkpoint_dir()
    if not (base / "unet").is_dir() and (base / "checkpoint" / "unet").is_dir():
        base = base / "checkpoint"  # a model folder, as adapt itself writes
    if not (base / "unet").is_dir():
        raise InputError(f"{base}: not a model folder (no unet/); --from takes a diffusers "
                         "checkpoint such as an adapted MODEL_DIR or its checkpoint/")
    if steps is not None and steps < 1:
        raise InputError(f"steps: {steps} is not positive")
    if not 0 < lr < 1:
        raise InputError(f"lr: {lr:g} is not a learning rate in (0, 1); the default is {ADAPT_LR:g}")
    where = use_device(device)
    compare_with = base_engine(base)  # before any work: a --from without its engine fails now
    train_series, held_series, how = split_series(scans, holdout, seed)
    train_count = sum(len(s.slices) for s in train_series)
    if train_count < 1:
        raise InputError("adapt: no training slice left after the hold-out; lower --holdout or "
                         "give more series")
    if scans.slice_count < FEW_SLICES:
        echo(f"warning: {scans.slice_count} slice(s); below {FEW_SLICES} the result may fit "
             "these slices more than the scanner")
    stored = base_settings(base)
    if recipe(stored.get("recipe", Settings.recipe)).noise_level:
        raise InputError(f"{base}: a noise-conditioned recipe; adapt fits image-conditioned "
                         "models such as the built-in one")
    picks = spread_slices(train_series, MAX_TRAIN_SLICES)
    patch = stored.get("patch", Settings.patch)
    per_dose = patches_per_dose(max(max(s.hu.shape) for _, s in picks), patch)
    doses = int(np.clip(math.ceil(TARGET_PATCHES / (len(picks) * per_dose)), 2, 16))
    batch = 8 if where.type == "cpu" else 32
    plan = Plan(steps or plan_steps(train_count), doses, per_dose, batch, len(picks), how)
    echo(f"plan: {plan.text()}" + ("" if steps else " (steps chosen from the data; --steps "
                                                      "sets them)"))
    if len(picks) < train_count:
        echo(f"  training slices: {len(picks)} of {train_count}, spread evenly (neighbouring "
             "slices add little)")
    settings = Settings(**{**stored, "seed": seed, "init": str(base.resolve()), "unet_steps": 0,
                           "tune_steps": plan.steps, "tune_lr": lr, "unet_batch": batch,
                           "workers": workers, "scenes": (), "tune_scenes": (),
                           "checkpoint_every": CHECKPOINT_EVERY, "anatomy_lesions": 0.0,
                           "tune_noise_hu": None, "tune_noise_scale": None})
    # The base model's enhancement settings (training's own where it has none), with the
    # views asked for (default: the base's own): a setting of the model, not of its training
    # (export carries it into the engine's manifest). Read before any work: a malformed
    # scanside.json fails now.
    enhance = {**ENHANCE, **read_enhance_defaults(base)}
    ensemble = int(enhance["ensemble"] if ensemble is None else ensemble)
    enhance["ensemble"] = ensemble
    check_run(out, plan, scans, train_series, held_series, seed, ensemble)
    clock = Clock(out / "train" / "minutes.json", started)
    validation_pairs = held_pairs(SiteScans(held_series, []), VALIDATION_SLICES, seed + 1,
                                  workers, echo)
    validation = HeldOut(out, validation_pairs, echo)
    card = card_record(scans, train_series, held_series, plan, settings, seed, device)
    card["training"]["ensemble"] = ensemble
    trained = out / "train" / "trained.json"  # the checkpoint folder is this plan's, complete
    if trained.is_file() and (out / "checkpoint" / "training.json").is_file():
        echo(f"training: done before ({out / 'checkpoint'})")
    else:
        train_default(out, settings, echo, device,
                      data=SiteData(out, picks, settings, plan, workers, echo),
                      validation=validation, folder="checkpoint",
                      extra_settings={"provenance": PROVENANCE, "enhance": enhance},
                      info={"task": "low-dose CT denoising, adapted to a site's own scans "
                                    "(scanside models adapt)", "adapt": card["training"]})
        save_json(trained, {"steps": plan.steps})
    card["training"]["chosen_step"] = validation.chosen_step()
    card["training"]["validation"] = validation.history
    engine = export_engine(out, echo)
    card["training"]["minutes_to_model"] = clock.minutes()
    if held_series:
        card_series = trimmed(held_series, CARD_SLICES)
        echo(f"card: evaluating base and adapted models on "
             f"{sum(len(s.slices) for s in card_series)} held-out slice(s) ...")
        views = "" if ensemble == 1 else f" ({ensemble} views)"
        evaluation = siteeval.evaluate_site(
            SiteScans(card_series, []), compare_with, compare=[engine],
            bm3d=bm3d, bm3d_profile=bm3d_profile,
            sampling=Sampling(ensemble=ensemble), seed=seed + 2, workers=workers, echo=echo,
            panels=out / "card",
            labels=[("base" if compare_with else "built-in") + views, "adapted" + views])
        card["evaluation"] = evaluation
    card["training"]["minutes"] = clock.minutes()
    write_card(out, card)
    echo(f"done in {card['training']['minutes']:.1f} min: {out} (engine in {engine}; card "
         f"{out / 'README.md'})")
    return out


class Clock:
    """Minutes a run has taken over all its sessions: each session records its own time so
    far in ``file`` whenever asked, so a resumed run reports the sum, not its last part."""

    def __init__(self, file: Path, started: float) -> None:
        self.file, self.started, self.session = file, started, f"{time.time():.3f}"
        self.sessions = json.loads(file.read_text()).get("sessions", {}) if file.is_file() else {}

    def minutes(self) -> float:
        self.sessions[self.session] = (time.perf_counter() - self.started) / 60
        save_json(self.file, {"sessions": self.sessions})
        return round(sum(self.sessions.values()), 1)


def trimmed(series: list[SiteSeries], count: int) -> list[SiteSeries]:
    """The series with at most ``count`` slices in all, spread evenly."""
    keep = {id(sl) for _, sl in spread_slices(series, count)}
    out = [replace(s, slices=[sl for sl in s.slices if id(sl) in keep]) for s in series]
    return [s for s in out if s.slices]


def held_pairs(held: SiteScans, count: int, seed: int, workers: int,
               echo: Callable[[str], None]) -> list:
    """Held-out slices at 20/40/80 HU, without lesions: what chooses the checkpoint."""
    if not held.series:
        return []
    chosen = SiteScans(trimmed(held.series, count), [])
    pairs, _ = siteeval.simulate(chosen, siteeval.NOISE_HU, seed=seed, lesions=0.0,
                                 workers=workers, echo=echo)
    return pairs


def base_engine(base: Path) -> Optional[Path]:
    """The engine of the base model for the card's comparison: None (the built-in) when the
    base is the built-in checkpoint; its model folder's engine otherwise."""
    from scanside.runtime.default import default_checkpoint_dir

    if base.resolve() == default_checkpoint_dir().resolve():
        return None
    engine = base.parent / "engine"
    if not (engine / "manifest.json").is_file():
        raise InputError(f"{base}: no engine beside it ({engine}); export it first with "
                         f"`scanside export {base} --out {engine} --dynamic`")
    return engine


def export_engine(out: Path, echo: Callable[[str], None]) -> Path:
    """MODEL_DIR/engine: fp32 ONNX at any size, as the built-in engine."""
    from scanside.export.pipeline import export_model

    engine = out / "engine"
    if (engine / "manifest.json").is_file() and (engine / "manifest.json").stat().st_mtime >= \
            (out / "checkpoint" / "training.json").stat().st_mtime:
        echo(f"engine: {engine} is up to date")
        return engine
    echo("engine: exporting fp32 ONNX ...")
    export_model(out / "checkpoint", engine, dynamic=True, overwrite=True)
    return engine


def check_run(out: Path, plan: Plan, scans: SiteScans, train_series: list, held_series: list,
              seed: int, ensemble: int = 1) -> None:
    """A run folder holds one adaptation: the same data split, plan and views, or an error."""
    record = {"plan": asdict(plan), "seed": seed,
              "train": [s.key for s in train_series], "held_out": [s.key for s in held_series],
              "slices": [len(s.slices) for s in scans.series]}
    if ensemble != 1:  # recorded only then: run folders from before the setting still resume
        record["ensemble"] = ensemble
    file = out / "train" / "adapt.json"
    before, now = (json.loads(file.read_text()) if file.is_file() else None,
                   json.loads(json.dumps(record)))
    if before is not None and before != now:
        differ = [key for key in dict.fromkeys([*before, *now]) if before.get(key) != now.get(key)]
        said = {"seed": "seed", "ensemble": "ensemble (views)", "plan": "plan (steps, doses, split)",
                "train": "training series", "held_out": "held-out series", "slices": "slices read"}
        started = "; ".join(f"{said.get(k, k)}: started with {before.get(k, 1)}, now {now.get(k, 1)}"
                            for k in differ if k in ("seed", "ensemble"))
        raise InputError(f"{out}: holds an adaptation of other data or settings "
                         f"({', '.join(said.get(k, k) for k in differ)} differ"
                         + (f"; {started}" if started else "") + f"; {file}); resume it with the "
                         "same scans and options, or choose a new out folder")
    save_json(file, record)


def card_record(scans: SiteScans, train_series: list, held_series: list, plan: Plan,
                settings: Any, seed: int, device: str) -> dict[str, Any]:
    def data(series: list) -> dict[str, Any]:
        return SiteScans(series, []).summary() | {"names": [s.name for s in series]}

    return {
        "provenance": PROVENANCE,
        "data": {"all": scans.summary(), "training": data(train_series),
                 "held_out": data(held_series), "left_out": left_out_counts(scans.left_out)},
        "training": {"plan": asdict(plan), "seed": seed, "device": device,
                     "learning_rate": settings.tune_lr, "base_recipe": settings.recipe,
                     "lesions_per_128px": LESIONS, "noise_hu": list(settings.noise_hu)},
    }


def write_card(out: Path, card: dict[str, Any]) -> None:
    """MODEL_DIR/card.json and README.md, written atomically."""
    from scanside.files import atomic_path

    for name, body in (("card.json", json.dumps(card, indent=2, default=float) + "\n"),
                       ("README.md", card_text(card))):
        with atomic_path(out / name, overwrite=True) as tmp:
            Path(tmp).write_text(body, encoding="utf-8")


def card_text(card: dict[str, Any]) -> str:
    d, t = card["data"], card["training"]
    lines = ["# A site-adapted scanside model", "",
             f"**{card['provenance']['statement'].capitalize()}.** It was fitted to patient "
             "images; it holds no patient identifier, but it is derived data.", "",
             "## Data", "",
             f"- all: {d['all']['series']} series, {d['all']['slices']} slices used",
             f"- training: {d['training']['series']} series ({', '.join(d['training']['names'])}), "
             f"{d['training']['slices']} slices",
             f"- held out: {d['held_out']['series']} series "
             f"({', '.join(d['held_out']['names']) or 'none'}), {d['held_out']['slices']} slices",
             f"- scanners: {', '.join(d['all']['scanner_models']) or 'not given'} "
             f"({', '.join(d['all']['manufacturers']) or '-'}); kernels "
             f"{', '.join(d['all']['kernels']) or 'not given'}; "
             f"kV {', '.join(d['all']['kvp']) or '-'}; "
             f"pixels {d['all']['pixel_mm']} mm; sizes {', '.join(d['all']['sizes'])}",
             "- left out: " + (", ".join(f"{n} x {r}" for r, n in d["left_out"].items())
                               or "nothing"),
             "", "## Training", "",
             f"- {t['plan']['split']}",
             f"- {t['plan']['steps']} steps, batch {t['plan']['batch']}, learning rate "
             f"{t['learning_rate']:g}, seed {t['seed']}, on {t['device']}; "
             f"{t['plan']['train_slices']} training slices x {t['plan']['doses']} simulated doses "
             f"({t['noise_hu'][0]:g}-{t['noise_hu'][1]:g} HU) x {t['plan']['per_dose']} patches; "
             f"lesions drawn in: {t['lesions_per_128px']:g} per 128x128 px of flat soft tissue",
             *([f"- views: {t['ensemble']} rotated/mirrored views averaged by default "
                f"({t['ensemble']}x the time of one; the held-out evaluation below ran both "
                "models at it; `--ensemble 1` on enhance for one)"]
               if t.get("ensemble", 1) != 1 else []),
             f"- chosen checkpoint: step {t.get('chosen_step')} (best mean PSNR on held-out slices"
             + ("; step 0 is the base model's own weights: adapting did not improve on them)"
                if t.get("chosen_step") == 0 else ")"),
             f"- time: {t.get('minutes_to_model')} min to the exported model, "
             f"{t.get('minutes')} min with this card's evaluation", ""]
    if "evaluation" in card:
        lines += ["## Held-out evaluation (`scanside models evaluate --on`)", "",
                  "On held-out series only; they also chose the checkpoint (on other noise "
                  "draws, without lesions), so the adapted column is slightly optimistic.", "",
                  "```",
                  siteeval.table(card["evaluation"]), "```", "",
                  "Panels (input | base model | adapted | BM3D | reference, soft-tissue window): "
                  "card/panel-*.png", ""]
    else:
        lines += ["No held-out series: the model is unmeasured on data it did not see.", ""]
    return "\n".join(lines)
