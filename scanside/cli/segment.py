"""`scanside segment` and `scanside annotate`: DICOM series through a segmentation engine into
DICOM SEG, and lesion candidates into a SEG plus a TID 1500 Structured Report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scanside.runtime.sampling import Sampling

from .enhance import summarise, write_report
from .options import add_backend, add_ensemble, positive_int, window_of


def add_parser(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("segment", help="DICOM series -> DICOM SEG with a segmentation engine")
    add_options(p, engine_required=True)
    p.set_defaults(func=cmd_segment, annotate=False)

    p = sub.add_parser("annotate", help="mark lesion candidates on CT: DICOM SEG + SR "
                                        "(research aid, not a diagnosis)")
    add_options(p, engine_required=False)
    p.set_defaults(func=cmd_segment, annotate=True, fractional=False)


def add_options(p: argparse.ArgumentParser, engine_required: bool) -> None:
    p.add_argument("inputs", nargs="+", type=Path, help="DICOM files or folders")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--engine", type=Path, required=engine_required,
                   help="a segmentation engine (task 'segment' in its manifest)" +
                        ("" if engine_required else "; default: the built-in lesion-candidate "
                                                    "model (CT)"))
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="mask samples per view; their mean is the probability (default: the "
                        "model's own)")
    p.add_argument("--threshold", type=float, default=None,
                   help="a pixel is in the segment above this probability (default: the "
                        "model's own)")
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps per sample "
                                                                    "(default: the model's own)")
    p.add_argument("--seed", type=int, default=0, help="the first sample's seed (default 0)")
    add_ensemble(p)
    p.add_argument("--window", metavar="CENTER,WIDTH",
                   help="value window mapped to the model's input (default: CT [-1000, 1000] "
                        "HU, else the file's VOI window)")
    if engine_required:
        p.add_argument("--fractional", action="store_true",
                       help="write the probability (fractional SEG), not the thresholded mask")
    p.add_argument("--preview", action="store_true",
                   help="also write a PNG per slice with the mask's outline")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--report", type=Path, help="write the run's report as JSON")
    add_backend(p)


def cmd_segment(args: argparse.Namespace) -> int:
    from scanside import Pipeline
    from scanside.dicom.segment import segment_series
    from scanside.dicom.series import check_output_dir
    from scanside.runtime.default import default_lesion_engine_dir

    check_output_dir(args.out, args.inputs)  # before the engine loads: fail fast
    engine = args.engine if args.engine is not None else default_lesion_engine_dir()
    pipe = Pipeline.load(engine, args.backend)
    sampling = Sampling(steps=args.steps, seed=args.seed, ensemble=args.ensemble)
    pipe.segment_settings(sampling, args.seeds, args.threshold)  # refuses an enhance engine
    started = time.perf_counter()
    report = segment_series(args.inputs, pipe, args.out, sampling=sampling, seeds=args.seeds,
                            threshold=args.threshold, window=window_of(args),
                            fractional=args.fractional, annotate=args.annotate,
                            preview=args.preview, overwrite=args.overwrite,
                            modalities=("CT",) if args.engine is None else ())
    report.seconds = time.perf_counter() - started
    for counts in report.counts:
        marks = (f", {counts['candidates']} candidate(s)" if "candidates" in counts else "")
        print(f"series ...{counts['series']}: {counts['slices']} slice(s), "
              f"{counts['flagged_pixels']} pixel(s) in the segment{marks}")
    if args.report:
        write_report(args.report, report)
    if args.annotate and report.counts:
        print("research aid: candidates from a model trained on synthetic CT; not a diagnosis")
    return summarise(len(report.written), report.failures, report.seconds, report.images,
                     len(report.skipped))

