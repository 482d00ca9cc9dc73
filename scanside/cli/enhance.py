"""`scanside generate` and `scanside enhance`: images through a pipeline, locally or on Ray."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from scanside.errors import InputError
from scanside.runtime.sampling import Sampling

from scanside.runtime.maps import CHANGE_K, MIN_VIEWS

from .options import (add_sampling, add_workers, gpu_options, load_for_slices, maps_arg, sampling_of,
                      window_of)

if TYPE_CHECKING:
    from scanside.dicom import Window


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """`scanside generate` and `scanside enhance` on the subcommand parser ``sub``."""
    p = sub.add_parser("generate", help="text -> image")
    add_sampling(p, guidance=7.5, strength=False)
    p.add_argument("--out", required=True, type=Path, help="output .png or .npy")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("enhance", help="enhance DICOM files/folders and PNG/NPY images")
    p.add_argument("inputs", nargs="+", type=Path,
                   help="DICOM files or folders (one new series per source series), .png or .npy")
    add_sampling(p, guidance=1.0, strength=True)
    p.add_argument("--out", required=True, type=output_location,
                   help="output folder (or a .png/.npy file, for one image input); with --ray "
                        "also a filesystem URI such as s3://bucket/prefix")
    p.add_argument("--window", metavar="CENTER,WIDTH",
                   help="DICOM value window mapped to the model's input (default: CT "
                        "[-1000, 1000] HU, else the file's VOI window, else the image range)")
    p.add_argument("--preview", action="store_true",
                   help="DICOM: also write source | result | difference PNGs")
    p.add_argument("--maps", type=maps_arg, default=(), metavar="uncertainty,change",
                   help="DICOM: also write what the model changed and how sure it was, each "
                        "as a Parametric Map, a grayscale series and (change) a SEG of the "
                        "flagged area, beside the enhanced series (docs/maps.md); uncertainty "
                        f"runs at least {MIN_VIEWS} views (with --ensemble 1: {MIN_VIEWS}x the "
                        "model time)")
    p.add_argument("--change-k", type=float, default=CHANGE_K, metavar="K",
                   help="--maps change: flag where the change exceeds K x the local noise "
                        f"(default {CHANGE_K:g})")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (a head node's address, 'auto', or none for a "
                        "local one); --out must be a path every node sees")
    add_workers(p, ray=True)
    p.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="--ray: CPUs reserved per actor (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="--ray: GPUs reserved per actor, for --backend cuda (default 0)")
    p.add_argument("--report", type=Path, help="write the run's report as JSON (with --maps: "
                                                 "each instance's counts)")
    p.set_defaults(func=cmd_enhance)


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from scanside import Pipeline
    from scanside.files import refuse_existing, write_image

    if args.out.suffix.lower() not in (".png", ".npy", ".dcm"):
        raise InputError(f"--out: {args.out} must end in .png, .npy or .dcm")
    refuse_existing(args.out, args.overwrite)
    pipe = Pipeline.load(args.engine, args.backend, vae_tile=args.vae_tile, gpu=gpu_options(args))
    image = pipe.generate(args.prompt, steps=args.steps, guidance=args.guidance, seed=args.seed,
                          scheduler=args.scheduler, negative_prompt=args.negative_prompt,
                          progress=True)
    if args.out.suffix.lower() == ".dcm":
        from scanside.dicom.synthetic import secondary_capture
        from scanside.dicom.write import save

        drawn = Sampling(prompt=args.prompt, strength=1.0, steps=args.steps,
                         guidance=args.guidance, seed=args.seed, scheduler=args.scheduler)
        save(secondary_capture(image, pipe.describe(drawn)), args.out)
    else:
        write_image(args.out, image, np.dtype(np.uint8), overwrite=args.overwrite)
    print(f"wrote {args.out}")
    return 0


def output_location(text: str) -> "Path | str":
    """--out: a local path, or (kept as text: Path would fold its '//') a filesystem URI."""
    from scanside.store import is_store, local_path

    return text if is_store(text) else Path(local_path(text))


def cmd_enhance(args: argparse.Namespace) -> int:
    from scanside.batch import Report, enhance_images
    from scanside.files import IMAGE_SUFFIXES

    images = [p for p in args.inputs if p.suffix.lower() in IMAGE_SUFFIXES]
    dicoms = [p for p in args.inputs if p.suffix.lower() not in IMAGE_SUFFIXES]
    window, sampling = window_of(args), sampling_of(args)
    if isinstance(args.out, str):
        from scanside.store import redact

        if args.ray is None:
            raise InputError(f"--out {redact(args.out)}: a filesystem URI is written by "
                             "the cluster path only; add --ray, or give a local folder")
    elif dicoms:
        from scanside.dicom.series import check_output_dir

        check_output_dir(args.out, dicoms)  # before the engine loads: fail fast
    if args.maps and (images or args.ray is not None):
        where = "--ray" if args.ray is not None else str(images[0])
        raise InputError(f"--maps: made for DICOM inputs enhanced here only so far ({where}); "
                         "leave out --maps, or call Pipeline.enhance_maps from Python")
    if args.ray is not None:
        return enhance_on_ray(args, dicoms, images, window, sampling)
    pipe, workers = load_for_slices(args)
    started = time.perf_counter()
    report = Report()
    if images:
        report.absorb(enhance_images(images, pipe, args.out, sampling, overwrite=args.overwrite,
                                     workers=workers, single=len(args.inputs) == 1,
                                     on_output=lambda p: print(f"wrote {p}")))
    if dicoms:
        from scanside.dicom import enhance_series

        report.absorb(enhance_series(dicoms, pipe, args.out, window=window, preview=args.preview,
                                     overwrite=args.overwrite, workers=workers,
                                     sampling=sampling, maps=args.maps, change_k=args.change_k))
    if report.counts:
        print(maps_summary(report.counts))
    report.seconds = time.perf_counter() - started
    if args.report:
        write_report(args.report, report)
    return summarise(len(report.written), report.failures, time.perf_counter() - started,
                     report.images, len(report.skipped))


def enhance_on_ray(args: argparse.Namespace, dicoms: list[Path], images: list[Path],
                   window: "Optional[Window]", sampling: Sampling) -> int:
    from scanside.cluster import enhance_archive

    if images:
        raise InputError(f"--ray: {images[0]} is a PNG/NPY image; the cluster path takes DICOM "
                         "files and folders only")
    if args.vae_tile:
        raise InputError("--vae-tile: not on the cluster path yet (its workers load the engine "
                         "with --max-tile only); leave it out with --ray")
    report = enhance_archive(dicoms, args.out, engine=args.engine,
                             address=None if args.ray == "local" else args.ray,
                             workers=args.workers or 2, cpus_per_worker=args.cpus_per_worker,
                             gpus_per_worker=args.gpus_per_worker,
                             backend=args.backend, max_tile=args.max_tile, window=window,
                             overwrite=args.overwrite, report_json=args.report,
                             sampling=sampling)
    for series, counts in sorted(report.series.items()):
        print(f"series {series}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if report.first_output_s is not None:
        print(f"first output after {report.first_output_s:.1f} s")
    return summarise(len(report.written), [(Path(p), r) for p, r in report.failures],
                     report.seconds, report.images, len(report.skipped))


def maps_summary(counts: list[dict]) -> str:
    """One line over every instance's map counts."""
    parts = [f"maps of {len(counts)} image(s)"]
    flagged = [c["flagged_mm2"] for c in counts if c.get("flagged_mm2") is not None]
    if flagged:
        parts.append(f"changed structure flagged over {sum(flagged):g} mm2 in "
                     f"{sum(1 for f in flagged if f > 0)} of them")
    means = [c["uncertainty_hu_mean"] for c in counts if c.get("uncertainty_hu_mean") is not None]
    if means:
        parts.append(f"mean uncertainty in soft tissue {sum(means) / len(means):.1f} HU")
    return "; ".join(parts)


def write_report(path: Path, report: "object") -> None:
    """The run's report as JSON, atomically: files, failures and the counts (--maps: each
    instance's; segment: each series')."""
    from scanside.files import write_json

    data = {"written": len(report.written), "skipped": len(report.skipped),
            "images": report.images, "seconds": round(report.seconds, 2),
            "failures": [{"file": str(p), "reason": r} for p, r in report.failures],
            "counts": report.counts}
    write_json(path, data)


def summarise(written: int, failures: list[tuple[Path, str]], seconds: float, images: int,
              skipped: int = 0) -> int:
    per_image = f", {seconds / images:.2f} s per image" if images else ""
    resumed = f", {skipped} already done by an earlier run" if skipped else ""
    print(f"{written} file(s) written{resumed}, {len(failures)} failed{per_image}")
    for source, reason in failures:
        # Reasons name their file already; the prefix is added only where one does not.
        named = reason if reason.startswith(str(source)) else f"{source}: {reason}"
        print(f"  failed: {named}", file=sys.stderr)
    return 2 if failures else 0
