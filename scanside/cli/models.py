"""`scanside models ...`: build, train, simulate and evaluate models offline (scanside.training)."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanside.errors import InputError

from .options import add_ensemble, add_noise_factor, consistency_arg, positive_float, positive_int, strength_arg


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """`scanside models` and its subcommands on the subcommand parser ``sub``."""
    from scanside.training.recipes import RecipeName, recipe

    models = sub.add_parser("models", help="build, train and evaluate models offline")
    msub = models.add_subparsers(dest="models_command", required=True)
    p = msub.add_parser("build", help="write a recipe's checkpoint in diffusers' format")
    p.add_argument("recipe", choices=[r.value for r in RecipeName])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_models_build)

    from scanside.training.recipes import TINY_VAE_SHAPES

    p = msub.add_parser("build-tiny-vae", help="write a TAESD-shaped AutoencoderTiny with random "
                                               "weights, to benchmark export --tiny-vae")
    p.add_argument("shape", choices=sorted(TINY_VAE_SHAPES))
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_models_build_tiny_vae)

    from scanside.training.train import TASKS, Settings

    p = msub.add_parser("train-default", help="train the default low-dose CT model (resumable; "
                                              "needs the export and train extras)")
    p.add_argument("out_dir", type=Path, help="run folder: data, checkpoints, and model/ at the end")
    p.add_argument("--seed", type=int, default=Settings.seed, help="everything random follows it")
    p.add_argument("--recipe", default=Settings.recipe,
                   choices=[r.value for r in RecipeName if recipe(r).identity_vae],
                   help="the model's shape (ct-deep: more capacity, 1.6x the UNet time; ct-fast: no "
                        "full-resolution blocks on the way down, 0.7-0.9x the UNet time)")
    p.add_argument("--task", choices=TASKS, default=Settings.task,
                   help="denoise: the enhancement model; lesions: the lesion-candidate model "
                        "(the UNet draws the lesion mask; run it with --refine-t 999, see "
                        "docs/annotate.md)")
    p.add_argument("--concat-scale", type=positive_float, default=Settings.concat_scale,
                   metavar="S", help="multiply the low-dose image the UNet sees by S (the "
                                     "lesion task trains with 10; export carries it)")
    p.add_argument("--unet-steps", type=positive_int, default=Settings.unet_steps,
                   help="phase 1: plain loss")
    p.add_argument("--tune-steps", type=int, default=Settings.tune_steps,
                   help="phase 2: more steps from phase 1's weights, at a lower learning rate")
    p.add_argument("--tune-lr", type=positive_float, default=Settings.tune_lr, metavar="LR",
                   help="phase 2's peak learning rate (default %(default)g; lower it to go on "
                        "from a trained --init without undoing it)")
    p.add_argument("--tune-noise-power", type=float, default=Settings.noise_weight_power,
                   metavar="P", help="phase 2: each sample's loss / its noise std^P (0: phase "
                                     "1's loss)")
    p.add_argument("--tune-lowfreq-weight", type=float, default=Settings.lowfreq_weight,
                   metavar="W", help="phase 2: penalty on the error's block means (0: none)")
    p.add_argument("--tune-noise-scale", type=float, nargs=2, metavar=("LO", "HI"),
                   help="phase 2: the factor range each patch's noise is scaled by (default "
                        f"phase 1's {Settings.noise_scale[0]:g} {Settings.noise_scale[1]:g})")
    p.add_argument("--tune-noise-hu", type=positive_float, default=None, metavar="HU",
                   help="phase 2 at one noise level: every patch's noise scaled to HU (+-15 %%); "
                        "a specialist, to measure what knowing the noise level can buy")
    p.add_argument("--anatomy-lesions", type=float, default=Settings.anatomy_lesions, metavar="N",
                   help="also draw faint lesions into the anatomy scenes, N per 128x128 px of "
                        "their flat soft tissue (0: only the phantoms have lesions)")
    p.add_argument("--scenes", type=scene_counts, action="append", metavar="SOURCE=COUNT",
                   help="scenes of a training source (head, natural, phantom, chest, leaves, "
                        "tissue; repeatable; 0 leaves one out)")
    p.add_argument("--tune-scenes", type=scene_counts, action="append", metavar="SOURCE=COUNT",
                   help="scenes only phase 2 trains on, after phase 1's (repeatable)")
    p.add_argument("--refine-t", type=positive_int, default=Settings.refine_t, metavar="T",
                   help="train on timesteps 1..T (the built-in model enhances at t = 1 only; "
                        f"default {Settings.refine_t})")
    p.add_argument("--lesion-weight", type=float, default=Settings.lesion_weight, metavar="W",
                   help="how much more the loss weighs the phantoms' lesion pixels (default "
                        f"{Settings.lesion_weight:g}; 0: as any pixel)")
    p.add_argument("--init", type=Path, metavar="MODEL_DIR",
                   help="start from a trained model (e.g. scanside/default_model/checkpoint) "
                        "instead of phase 1: --tune-steps of phase 2 on this run's data")
    p.add_argument("--batch", type=positive_int, default=Settings.unet_batch,
                   help=f"patches per UNet step (default {Settings.unet_batch})")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="torch device of the UNet steps: cpu (default) or cuda[:N]; the "
                        "batches are the same on either, the weights differ by rounding")
    p.add_argument("--workers", type=positive_int, default=Settings.workers,
                   help="processes simulating the scans")
    p.set_defaults(func=cmd_models_train)

    p = msub.add_parser("simulate", help="write simulated low-dose CT slices and their "
                                         "full-dose references as DICOM (needs the train extra)")
    p.add_argument("out_dir", type=Path, help="gets low/ and full/ folders")
    p.add_argument("--split", choices=["train", "val", "test"], default="val")
    p.add_argument("--pairs", type=positive_int, default=16)
    p.add_argument("--size", type=positive_int, default=128)
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_models_simulate)

    p = msub.add_parser("evaluate", help="quality figures of a CT engine: on the held-out synthetic "
                                         "test set, or (--on) on a site's own CT series")
    p.add_argument("engine_dir", type=Path, nargs="?", default=None,
                   help="engine or model directory (default: the built-in model)")
    site = p.add_argument_group("a site's own scans (--on)")
    site.add_argument("--on", nargs="+", type=Path, metavar="SCANS",
                      help="routine-dose CT: DICOM files or folders, NIfTI volumes (HU); each "
                           "slice goes through the scan chain at its own pixel size")
    site.add_argument("--noise", nargs="+", type=positive_float, metavar="HU",
                      help="soft-tissue noise levels to simulate (default 20 40 80)")
    site.add_argument("--compare", action="append", type=Path, default=[], metavar="ENGINE",
                      help="another engine or model folder to measure beside it (repeatable)")
    site.add_argument("--lesions", type=non_negative_float, default=None, metavar="N",
                      help="faint disks drawn into each slice before the scan, N per 128x128 px "
                           "of flat soft tissue (default 4, as many as find room; 0: none)")
    site.add_argument("--max-slices", type=positive_int, default=None, metavar="N",
                      help="evaluate at most N slices, spread over every series (default 50)")
    site.add_argument("--out", type=Path, metavar="DIR",
                      help="write evaluation.json, evaluation.txt and a PNG panel per noise level")
    add_bm3d_profile(site)
    synthetic = p.add_argument_group("the synthetic test set (without --on)")
    synthetic.add_argument("--pairs", type=positive_int, default=None, help="pairs (default 100)")
    synthetic.add_argument("--split", choices=["test", "val"], default=None,
                           help="val: for choosing sampling settings; the figures are on test")
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--strength", type=strength_arg, default=None)
    p.add_argument("--guidance", type=float, default=None)
    add_ensemble(p)
    p.add_argument("--consistency", type=consistency_arg, default=None, metavar="PX[:MAX]",
                   help="data consistency, as for enhance (default: the model's own)")
    add_noise_factor(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--skip", action="append", choices=["bm3d", "doses", "real", "anatomy"],
                   help="leave out a section: BM3D (slow), the dose sweep, the real-anatomy "
                        "slices, the held-out synthetic anatomy (repeatable; with --on only "
                        "bm3d applies)")
    p.add_argument("--json", type=Path, help="write the figures as JSON")
    p.set_defaults(func=cmd_models_evaluate)

    p = msub.add_parser("adapt", help="fine-tune the built-in model on a site's own routine-dose "
                                      "CT; writes a model folder with its engine and card (needs "
                                      "the export and train extras)")
    p.add_argument("scans", nargs="+", type=Path, metavar="SCANS",
                   help="routine-dose CT: DICOM files or folders, NIfTI volumes (HU)")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR",
                   help="the model folder (resumable: run the same command again to go on)")
    p.add_argument("--from", dest="base", type=Path, metavar="MODEL_DIR",
                   help="start from this model (default: the built-in one)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="training steps (default: chosen from the amount of data, and printed)")
    p.add_argument("--seed", type=int, default=0, help="the split, the data and every batch follow it")
    p.add_argument("--device", default="cpu", metavar="DEVICE", help="cpu (default) or cuda[:N]")
    p.add_argument("--lr", type=positive_float, default=None, metavar="LR",
                   help="peak learning rate of the cosine schedule (default 1e-04, the base "
                        "model's last phase)")
    p.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                   help="share of the series held out to choose the checkpoint and fill the "
                        "card (default 0.2; 0: none)")
    p.add_argument("--max-slices", type=positive_int, default=None, metavar="N",
                   help="read at most N slices, spread over every series (default: all)")
    p.add_argument("--skip", action="append", choices=["bm3d"],
                   help="leave BM3D out of the card's evaluation")
    add_bm3d_profile(p)
    add_ensemble(p, help="views the adapted model averages by default (that many times the "
                         "time of one; default: the base model's own, the built-in's 1); the "
                         "card measures both models at it")
    p.add_argument("--workers", type=positive_int, default=2, help="processes simulating the scans")
    p.set_defaults(func=cmd_models_adapt)


def add_bm3d_profile(p: "argparse.ArgumentParser | argparse._ArgumentGroup") -> None:
    p.add_argument("--bm3d-profile", choices=["lc", "np"], default=None,
                   help="BM3D's profile: lc (default), the bm3d package's low-complexity one, "
                        "~3x faster and 0.03-0.07 dB under np, its normal one, on real CT")


def check_bm3d_flags(args: argparse.Namespace) -> None:
    if args.bm3d_profile and "bm3d" in (args.skip or ()):
        raise InputError("--bm3d-profile: BM3D is left out (--skip bm3d); drop one of the two")


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give 0 or more")
    return value


def cmd_models_build(args: argparse.Namespace) -> int:
    from scanside.training import build

    build(args.recipe, args.out_dir, seed=args.seed)
    print(f"built {args.recipe} model in {args.out_dir}")
    return 0


def cmd_models_build_tiny_vae(args: argparse.Namespace) -> int:
    from scanside.training.recipes import build_tiny_vae

    build_tiny_vae(args.shape, args.out_dir, seed=args.seed)
    print(f"built a {args.shape}-shaped tiny VAE (random weights) in {args.out_dir}")
    return 0


def scene_counts(text: str) -> tuple[str, int]:
    """``SOURCE=COUNT`` for train-default --scenes."""
    from scanside.training.anatomy import Source

    source, sep, count = text.partition("=")
    sources = ", ".join(s.value for s in Source)
    if not sep or source not in {s.value for s in Source} or not count.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected SOURCE=COUNT with SOURCE one of "
                                         f"{sources}, e.g. chest=24 (0 leaves it out)")
    return source, int(count)


def tune_noise_scale(values: "list[float] | None") -> "tuple[float, float] | None":
    if values is None:
        return None
    lo, hi = values
    if not 0 < lo <= hi:
        raise InputError(f"--tune-noise-scale {lo:g} {hi:g}: give two factors 0 < LO <= HI, "
                         "e.g. --tune-noise-scale 0.35 1.4")
    return (lo, hi)


def cmd_models_train(args: argparse.Namespace) -> int:
    from scanside.training.train import Settings, train_default

    scenes = dict(Settings.scenes)
    scenes.update(args.scenes or ())
    settings = Settings(seed=args.seed, recipe=args.recipe, task=args.task,
                        concat_scale=args.concat_scale,
                        unet_steps=0 if args.init else args.unet_steps,
                        tune_steps=args.tune_steps, tune_lr=args.tune_lr, workers=args.workers,
                        scenes=tuple((k, v) for k, v in scenes.items() if v > 0),
                        noise_weight_power=args.tune_noise_power,
                        lowfreq_weight=args.tune_lowfreq_weight,
                        anatomy_lesions=args.anatomy_lesions,
                        tune_scenes=tuple(args.tune_scenes or ()),
                        tune_noise_scale=tune_noise_scale(args.tune_noise_scale),
                        tune_noise_hu=args.tune_noise_hu, refine_t=args.refine_t,
                        unet_batch=args.batch, lesion_weight=args.lesion_weight,
                        init=None if args.init is None else str(args.init.resolve()))
    model_dir = train_default(args.out_dir, settings, device=args.device)
    print(f"trained model: {model_dir}; export it with `scanside export {model_dir} --out ENGINE`")
    return 0


def cmd_models_evaluate(args: argparse.Namespace) -> int:
    from scanside.runtime.sampling import Sampling

    sampling = Sampling(steps=args.steps, strength=args.strength, guidance=args.guidance,
                        seed=args.seed, ensemble=args.ensemble, consistency_px=args.consistency,
                        noise_factor=args.noise_factor)
    if args.on:
        return evaluate_on_site(args, sampling)
    site_only = [flag for flag, value in (("--noise", args.noise), ("--compare", args.compare),
                                          ("--lesions", args.lesions), ("--out", args.out),
                                          ("--max-slices", args.max_slices),
                                          ("--bm3d-profile", args.bm3d_profile)) if value]
    if site_only:
        raise InputError(f"{', '.join(site_only)}: for a site's own scans; add --on SCANS")
    from scanside.training.evaluate import evaluate, table

    result = evaluate(args.engine_dir, pairs=args.pairs or 100, split=args.split or "test",
                      workers=args.workers, sampling=sampling, skip=frozenset(args.skip or ()))
    print(table(result))
    if args.json:
        from scanside.bench.report import write_json

        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


SITE_MAX_SLICES = 50  # evaluate --on's default: 50 x 512 px x 3 levels with BM3D in ~10 min


def evaluate_on_site(args: argparse.Namespace, sampling) -> int:
    from scanside.training import site, siteeval

    wrong = [flag for flag, value in (("--pairs", args.pairs), ("--split", args.split)) if value]
    wrong += [f"--skip {s}" for s in args.skip or () if s != "bm3d"]
    if wrong:
        raise InputError(f"{', '.join(wrong)}: for the synthetic test set, not with --on")
    check_bm3d_flags(args)
    scans = site.read_scans(args.on, args.max_slices or SITE_MAX_SLICES)
    panels = args.out
    result = siteeval.evaluate_site(
        scans, args.engine_dir, compare=args.compare, noise=tuple(args.noise or siteeval.NOISE_HU),
        lesions=siteeval.LESIONS_PER_AREA if args.lesions is None else args.lesions,
        bm3d="bm3d" not in (args.skip or ()),
        bm3d_profile=args.bm3d_profile or siteeval.BM3D_PROFILE, sampling=sampling, seed=args.seed,
        workers=args.workers, panels=panels)
    print(siteeval.table(result))
    if args.out:
        siteeval.write_report(result, args.out)
        print(f"wrote {args.out / 'evaluation.json'}, evaluation.txt and "
              f"{len(result.get('panels', []))} panel(s)")
    if args.json:
        from scanside.bench.report import write_json

        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_models_adapt(args: argparse.Namespace) -> int:
    from scanside.training import adapt, site, siteeval

    check_bm3d_flags(args)
    scans = site.read_scans(args.scans, args.max_slices)
    adapt.adapt(scans, args.out, base=args.base, steps=args.steps, seed=args.seed,
                device=args.device, holdout=adapt.HOLDOUT if args.holdout is None else args.holdout,
                workers=args.workers, bm3d="bm3d" not in (args.skip or ()),
                bm3d_profile=args.bm3d_profile or siteeval.BM3D_PROFILE, ensemble=args.ensemble,
                lr=adapt.ADAPT_LR if args.lr is None else args.lr)
    print(f"use it: scanside enhance SCANS --engine {args.out} --out OUT; it is derived from "
          "patient images: keep it on site")
    return 0


def cmd_models_simulate(args: argparse.Namespace) -> int:
    from scanside.dicom.synthetic import simulated_ct
    from scanside.dicom.write import save
    from scanside.training import ctsim

    seeds = ctsim.split_seeds(args.split, args.pairs)
    pairs = ctsim.make_pairs(seeds, args.size, args.workers)
    for dose in ("low", "full"):
        (args.out_dir / dose).mkdir(parents=True, exist_ok=True)
    for seed, pair in zip(seeds, pairs):
        for dose in ("low", "full"):
            ds = simulated_ct(getattr(pair, dose), f"scanside simulated {dose}-dose CT",
                              ctsim.PIXEL_CM * 10)
            save(ds, args.out_dir / dose / f"{args.split}{seed}.dcm", args.overwrite)
    print(f"wrote {len(pairs)} simulated low-dose slices to {args.out_dir / 'low'} and their "
          f"full-dose references to {args.out_dir / 'full'}")
    return 0
