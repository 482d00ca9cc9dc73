"""Options several commands share (sampling, backend, workers) and the argument types."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from scanside.errors import InputError
from scanside.runtime.maps import CHANGE_K
from scanside.runtime.sampling import Sampling, check_consistency

if TYPE_CHECKING:
    from scanside.dicom import Window


def strength_arg(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1]; e.g. 0.3")
    return value


def consistency_arg(text: str) -> "float | list[float]":
    """--consistency PX or PX:MAX (pipeline.check_consistency says what each keeps)."""
    try:
        parts = [float(part) for part in text.split(":")]
    except ValueError:
        parts = []
    value = parts[0] if len(parts) == 1 else parts
    try:
        check_consistency(value)
    except InputError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither PX >= 0 nor PX:MAX with 0 < PX < MAX; e.g. 8 or 2:32") from None
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer; e.g. 20")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not a positive number; e.g. 20")
    return value


def add_sampling(p: argparse.ArgumentParser, guidance: float, strength: bool) -> None:
    """Sampling options. For enhance, an option left out takes the model's own setting (its
    manifest's enhance_defaults), else the default shown."""
    from scanside.runtime.schedulers import SchedulerName

    own = "the model's own, else " if strength else ""
    unset = (lambda value: None) if strength else (lambda value: value)
    p.add_argument("--engine", type=Path, default=None,
                   help="engine directory from `scanside export` (default: scanside's "
                        "built-in low-dose CT model)")
    p.add_argument("--prompt", default=unset(""), help=f"text prompt (default: {own}empty)")
    p.add_argument("--negative-prompt", default=None, help="what guidance steers away from")
    p.add_argument("--steps", type=positive_int, default=unset(20),
                   help=f"scheduler steps (default: {own}20)")
    p.add_argument("--guidance", type=float, default=unset(guidance),
                   help=f"classifier-free guidance scale; 1 turns it off (default: {own}{guidance})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--scheduler", default=None, choices=[s.value for s in SchedulerName],
                   help="default: the model's own scheduler")
    add_backend(p)
    if strength:
        p.add_argument("--strength", type=strength_arg, default=None,
                       help=f"how far to noise the input, in (0, 1] (default: {own}0.3)")
        add_ensemble(p)
        p.add_argument("--consistency", type=consistency_arg, default=None, metavar="PX[:MAX]",
                       help="keep the input's content coarser than a Gaussian of PX pixels "
                            "(data consistency: flat tissue keeps its mean HU), or with :MAX "
                            "only between PX and MAX px (2:32: faint lesion-size structure "
                            "is the input's); default: the model's own, else 0 (off)")
        add_noise_factor(p)
        p.add_argument("--max-tile", type=positive_int, default=None, metavar="PX",
                       help="dynamic engines: run images whole up to PX on each side, else in "
                            "PX tiles (the memory budget; default: the engine's largest size). "
                            "Static engines always tile at their own size")
    add_vae_tile(p)


def add_vae_tile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vae-tile", type=positive_int, default=None, metavar="PX",
                   help="dynamic engines: the VAE encodes and decodes in PX tiles, one per call "
                        "(bounds its full-resolution memory; outputs differ slightly, see "
                        "docs/python-api.md); default: as the UNet")


def add_backend(p: argparse.ArgumentParser) -> None:
    from scanside.runtime.engines import Backend

    p.add_argument("--backend", default="cpu", choices=[b.value for b in Backend],
                   help="cpu (ONNX Runtime), cuda and ort-tensorrt (onnxruntime-gpu's CUDA and "
                        "TensorRT providers), tensorrt (native plans, built on first use), or "
                        "auto (the fastest present; -v says why the others were not). GPU "
                        "backends are not yet verified on hardware")
    p.add_argument("--cuda-graph", action="store_true",
                   help="GPU backends: capture fixed-shape calls in CUDA graphs and replay them")
    p.add_argument("--low-memory", action="store_true",
                   help="tensorrt: one engine's activations in GPU memory at a time (Jetson)")


def gpu_options(args: argparse.Namespace):
    from scanside.runtime.engines import GpuOptions

    return GpuOptions(cuda_graph=getattr(args, "cuda_graph", False),
                      low_memory=getattr(args, "low_memory", False))


def load_for_slices(args: argparse.Namespace):
    """(Pipeline, images in flight) for --workers: on the CPU each worker's engine calls get
    its share of the cores; on a GPU the workers' engine calls take turns while their reading,
    decoding and writing overlap (scanside.runtime.parallel)."""
    from scanside import Pipeline
    from scanside.runtime.parallel import default_workers, threads_per_worker

    workers = args.workers or default_workers()
    pipe = Pipeline.load(args.engine, args.backend, max_tile=args.max_tile, vae_tile=args.vae_tile,
                         gpu=gpu_options(args), threads=threads_per_worker(workers))
    return pipe, workers


def add_workers(p: argparse.ArgumentParser, ray: bool = False) -> None:
    extra = "; with --ray: actors, each holding the engines (default 2)" if ray else ""
    p.add_argument("--workers", type=positive_int, default=None,
                   help="images (DICOM slices, PNG/NPY files) in flight at once: on the CPU each "
                        "engine call runs on its share of the cores, on a GPU the engine calls "
                        "take turns while reading and writing overlap (default: 2 where there "
                        "are 2 or more cores)" + extra)


def add_node_options(p: argparse.ArgumentParser) -> None:
    add_workers(p)
    p.add_argument("--series-idle", type=float, default=30.0, metavar="S",
                   help="a series is complete when nothing arrived for S seconds (default 30)")
    p.add_argument("--forward-originals", action="store_true",
                   help="also forward the received instances")
    p.add_argument("--window", metavar="CENTER,WIDTH", help="as for enhance")
    p.add_argument("--maps", type=maps_arg, default=(), metavar="uncertainty,change",
                   help="as for enhance: the maps' series are forwarded with the enhanced one")
    p.add_argument("--change-k", type=float, default=CHANGE_K, metavar="K", help="as for enhance")
    p.add_argument("--segment-engine", type=Path, metavar="DIR",
                   help="after enhancing a series, segment its received images with this "
                        "segmentation engine and forward the DICOM SEG too")
    p.add_argument("--annotate", action="store_true",
                   help="after enhancing a series, mark lesion candidates (the built-in model, "
                        "or --segment-engine's) and forward the SEG and the SR too")


def maps_arg(text: str) -> tuple[str, ...]:
    """--maps: names of runtime.maps, checked as the library checks them."""
    from scanside.runtime.maps import check_maps

    try:
        return check_maps(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("maps: ")) from None


def load_segmenter(args: argparse.Namespace):
    """The node's segmentation pipeline: --segment-engine, or the built-in lesion model for
    --annotate alone; None for neither."""
    if args.segment_engine is None and not args.annotate:
        return None
    from scanside import Pipeline
    from scanside.runtime.default import default_lesion_engine_dir

    engine = args.segment_engine or default_lesion_engine_dir()
    pipe = Pipeline.load(engine, args.backend)
    pipe.segment_settings()  # refuses an enhancement engine before the node starts
    return pipe


def add_noise_factor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--noise-factor", type=float, default=None, metavar="F",
                   help="noise-conditioned models (recipe ct-noise; not the built-in one, which "
                        "reads the noise itself): tell the model F times the "
                        "noise level estimated from the image; above 1 removes more, below 1 "
                        "keeps more texture (default 1)")


def add_ensemble(p: argparse.ArgumentParser, default: Optional[int] = None,
                 help: str = "average this many rotated/mirrored views, that many times the "
                             "work (default: the model's own, else 1)") -> None:
    from scanside.runtime.images import ENSEMBLE_VIEWS

    p.add_argument("--ensemble", type=int, choices=sorted(ENSEMBLE_VIEWS), default=default,
                   help=help)


def sampling_of(args: argparse.Namespace) -> Sampling:
    """The command's sampling options as the one object every layer takes."""
    return Sampling(prompt=args.prompt, strength=args.strength, steps=args.steps,
                    guidance=args.guidance, seed=args.seed, scheduler=args.scheduler,
                    negative_prompt=args.negative_prompt, ensemble=args.ensemble,
                    consistency_px=args.consistency, noise_factor=args.noise_factor)


def window_of(args: argparse.Namespace) -> "Optional[Window]":
    """--window CENTER,WIDTH, or None for the file's own."""
    if args.window is None:
        return None
    from scanside.dicom import Window

    return Window.parse(args.window)
