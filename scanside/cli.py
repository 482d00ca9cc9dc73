"""The ``scanside`` command. The only place exceptions become exit codes:
0 success, 1 a failure inside scanside, 2 bad input (the message says which and how to fix it),
3 the output could not be written (disk full, read-only; what was finished is kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from scanside import __version__
from scanside.errors import InputError, ScansideError

log = logging.getLogger("scanside")
# Packages only the export side needs: their absence is a missing extra, not a bug.
EXPORT_PACKAGES = {"torch", "diffusers", "transformers", "onnx", "onnxscript", "safetensors"}


# -- argument helpers ---------------------------------------------------------------------
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
    from scanside.runtime.pipeline import check_consistency

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
                        "(bounds its full-resolution memory; outputs differ slightly, see the "
                        "README); default: as the UNet")


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


def add_noise_factor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--noise-factor", type=float, default=None, metavar="F",
                   help="noise-conditioned models (recipe ct-noise; not the built-in one, which "
                        "reads the noise itself): tell the model F times the "
                        "noise level estimated from the image; above 1 removes more, below 1 "
                        "keeps more texture (default 1)")


def add_ensemble(p: argparse.ArgumentParser) -> None:
    from scanside.runtime.images import ENSEMBLE_VIEWS

    p.add_argument("--ensemble", type=int, choices=sorted(ENSEMBLE_VIEWS), default=None,
                   help="average this many rotated/mirrored views, that many times the work "
                        "(default: the model's own, else 1)")


# -- commands -----------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from scanside.export import export_model

    if args.attention == "fused" and (args.tensorrt or args.trtexec_script):
        raise InputError("--attention fused with --tensorrt/--trtexec-script: the fused node is "
                         "ONNX Runtime's own, which TensorRT cannot parse; export TensorRT "
                         "engines with --attention plain (TensorRT fuses attention itself)")

    manifest = export_model(args.model_dir, args.out, height=args.height, width=args.width,
                            dynamic=args.dynamic, opset=args.opset,
                            concat_scale=args.concat_scale, overwrite=args.overwrite,
                            progress=True, precision=args.precision,
                            component_precision=parse_component_precision(args.component_precision),
                            calibration=args.calibration,
                            synthetic_calibration=args.synthetic_calibration,
                            int8_activations=args.int8_activations,
                            int8_weights=args.int8_weights,
                            trt_compat=args.trt_compat, attention=args.attention,
                            tiny_vae=args.tiny_vae, tiny_vae_parts=args.tiny_vae_parts)
    print(f"exported {args.model_dir} -> {args.out} ({manifest.height}x{manifest.width})")
    print_accuracy(manifest)
    if args.trtexec_script:
        from scanside.export.tensorrt import trtexec_script
        from scanside.files import atomic_path

        major = 8 if args.trt_compat else 10
        with atomic_path(args.trtexec_script, overwrite=args.overwrite) as tmp:
            tmp.write_text(trtexec_script(args.out, manifest, major))
        args.trtexec_script.chmod(0o755)
        print(f"wrote {args.trtexec_script} (trtexec, TensorRT {major}.x)")
    if args.tensorrt:
        from scanside.export.tensorrt import build_plans

        for plan in build_plans(args.out, manifest):
            print(f"TensorRT plan {plan}")
    return 0


def print_accuracy(m) -> None:
    """Each component's precision, size and measured parity; the final-image PSNR."""
    print("component     precision  MB       max|diff|  tolerance  measured against")
    for c in m.components.values():
        print(f"{c.name:13} {c.precision.value:9} {c.bytes / 1e6:8.1f} {c.parity_max_abs_diff:10.3g} "
              f"{c.parity_tolerance:10.3g}  {c.parity_reference}")
    if m.final_image_psnr_db is not None:
        print(f"accuracy    final image PSNR {m.final_image_psnr_db:.1f} dB vs the fp32 engine "
              f"(held-out image; calibration: {m.calibration})")


def parse_component_precision(text: Optional[str]) -> dict[str, str]:
    """'unet=int8,vae_decoder=fp16' -> {'unet': 'int8', 'vae_decoder': 'fp16'}."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--component-precision: {item!r} is not NAME=PRECISION; "
                             "e.g. unet=int8,vae_decoder=fp16")
        out[name.strip()] = value.strip()
    return out


def cmd_generate(args: argparse.Namespace) -> int:
    from scanside import Pipeline
    import numpy as np

    from scanside.files import refuse_existing, write_image

    if args.out.suffix.lower() not in (".png", ".npy", ".dcm"):
        raise InputError(f"--out: {args.out} must end in .png, .npy or .dcm")
    refuse_existing(args.out, args.overwrite)
    pipe = Pipeline.load(args.engine, args.backend, vae_tile=args.vae_tile, gpu=gpu_options(args))
    sampling = dict(prompt=args.prompt, steps=args.steps, guidance=args.guidance,
                    seed=args.seed, scheduler=args.scheduler)
    image = pipe.generate(negative_prompt=args.negative_prompt, progress=True, **sampling)
    if args.out.suffix.lower() == ".dcm":
        from scanside.dicom.synthetic import secondary_capture
        from scanside.dicom.write import save

        save(secondary_capture(image, pipe.describe(strength=1.0, **sampling)), args.out)
    else:
        write_image(args.out, image, np.dtype(np.uint8), overwrite=args.overwrite)
    print(f"wrote {args.out}")
    return 0


def output_for(source: Path, out: Path, single: bool) -> Path:
    if single and out.suffix.lower() in (".png", ".npy"):
        return out
    return out / f"{source.stem}_enhanced{source.suffix.lower()}"


def sampling_of(args: argparse.Namespace) -> dict:
    return dict(prompt=args.prompt, strength=args.strength, steps=args.steps,
                guidance=args.guidance, seed=args.seed, scheduler=args.scheduler,
                negative_prompt=args.negative_prompt, ensemble=args.ensemble,
                consistency_px=args.consistency, noise_factor=args.noise_factor)


def output_location(text: str) -> "Path | str":
    """--out: a local path, or (kept as text: Path would fold its '//') a filesystem URI."""
    from scanside.store import is_store, local_path

    return text if is_store(text) else Path(local_path(text))


def cmd_enhance(args: argparse.Namespace) -> int:
    from scanside.files import IMAGE_SUFFIXES

    images = [p for p in args.inputs if p.suffix.lower() in IMAGE_SUFFIXES]
    dicoms = [p for p in args.inputs if p.suffix.lower() not in IMAGE_SUFFIXES]
    window = None
    if args.window is not None:
        from scanside.dicom import Window

        window = Window.parse(args.window)
    if isinstance(args.out, str):
        from scanside.store import redact

        if args.ray is None:
            raise InputError(f"--out {redact(args.out)}: a filesystem URI is written by "
                             "the cluster path only; add --ray, or give a local folder")
    elif dicoms:
        from scanside.dicom.series import check_output_dir

        check_output_dir(args.out, dicoms)  # before the engine loads: fail fast
    if args.ray is not None:
        return enhance_on_ray(args, dicoms, images, window)
    pipe, workers = load_for_slices(args)
    started = time.perf_counter()
    written, failures, count = enhance_images(pipe, images, args, len(args.inputs) == 1, workers)
    skipped = 0
    if dicoms:
        from scanside.dicom import enhance_series

        report = enhance_series(dicoms, pipe, args.out, window=window, preview=args.preview,
                                overwrite=args.overwrite, workers=workers, **sampling_of(args))
        written += len(report.written)
        count += report.images
        failures += report.failures
        skipped = len(report.skipped)
    return summarise(written, failures, time.perf_counter() - started, count, skipped)


def enhance_on_ray(args: argparse.Namespace, dicoms: list[Path], images: list[Path],
                   window) -> int:
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
                             **sampling_of(args))
    for series, counts in sorted(report.series.items()):
        print(f"series {series}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if report.first_output_s is not None:
        print(f"first output after {report.first_output_s:.1f} s")
    return summarise(len(report.written), [(Path(p), r) for p, r in report.failures],
                     report.seconds, report.images, len(report.skipped))


def enhance_images(pipe, inputs: list[Path], args: argparse.Namespace, single: bool,
                   workers: int = 1):
    """PNG/NPY inputs, ``workers`` at once; returns (files written, failures, images)."""
    from scanside.files import read_image, refuse_existing, write_image
    from scanside.runtime.parallel import in_order

    if inputs and not (single and args.out.suffix.lower() in (".png", ".npy")):
        args.out.mkdir(parents=True, exist_ok=True)

    def one(source: Path) -> Path:
        target = output_for(source, args.out, single)
        if target.resolve() == source.resolve():
            raise InputError(f"{target}: output would replace the input; choose another --out")
        refuse_existing(target, args.overwrite)
        image = read_image(source)
        result = pipe.enhance(image, progress=workers == 1, **sampling_of(args))
        write_image(target, result, image.dtype, overwrite=args.overwrite)
        return target

    failures: list[tuple[Path, str]] = []
    written = 0
    for source, outcome in in_order(one, inputs, workers):
        try:
            target = outcome.result()
        except InputError as exc:  # a bad file does not stop the batch
            failures.append((source, str(exc)))
            continue
        written += 1
        print(f"{source} -> {target}")
    return written, failures, written


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


def node_settings(args: argparse.Namespace, **extra):
    from scanside.node import NodeSettings, Peer

    forward = [Peer.parse(text, "--forward", with_port=True) for text in args.forward or []]
    window = None
    if args.window is not None:
        from scanside.dicom import Window

        window = Window.parse(args.window)
    return NodeSettings(spool=args.spool, forward=forward, series_idle=args.series_idle,
                        forward_originals=args.forward_originals, window=window,
                        sampling=sampling_of(args), **extra)


def run_until_signalled(step) -> None:
    """Call ``step`` twice a second until SIGTERM or SIGINT (a service manager's stop)."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        step()
        stop.wait(0.5)


def cmd_serve(args: argparse.Namespace) -> int:
    from scanside.node import Node, Peer

    allow = [Peer.parse(text, "--allow", with_port=False) for text in args.allow or []]
    settings = node_settings(args, ae_title=args.ae_title, host=args.host, port=args.port,
                             allow=allow, tls_cert=args.tls_cert, tls_key=args.tls_key,
                             tls_ca=args.tls_ca)
    pipe, workers = load_for_slices(args)
    settings.workers = workers
    node = Node(settings, pipe)
    node.start()
    try:
        run_until_signalled(node.step)
    finally:
        node.stop()
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from scanside.dicom.series import check_output_dir
    from scanside.node import Node
    from scanside.node.watch import Watcher

    if not args.in_dir.is_dir():
        raise InputError(f"IN_DIR: {args.in_dir} is not a folder")
    check_output_dir(args.out, [args.in_dir])
    for folder, name in ((args.spool, "--spool"), (args.out, "--out")):
        inside = args.in_dir.resolve() in [folder.resolve(), *folder.resolve().parents]
        if inside:
            raise InputError(f"{name}: {folder} is inside the watched folder; choose one outside")
    pipe, workers = load_for_slices(args)
    node = Node(node_settings(args, derived=args.out, workers=workers), pipe)
    node.start(listen=False)
    watcher = Watcher(node, args.in_dir, args.stable)
    try:
        run_until_signalled(lambda: (watcher.scan(), node.step()))
    finally:
        node.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from scanside.node import open_journal

    if not (args.spool / "journal.sqlite").is_file():
        raise InputError(f"--spool: {args.spool} holds no scanside journal; give the folder "
                         "`scanside serve --spool` uses")
    journal = open_journal(args.spool)
    try:
        summary = journal.summary()
    finally:
        journal.close()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print("instances   " + (", ".join(f"{k} {v}" for k, v in sorted(summary["instances"].items())) or "none"))
    print("series      " + (", ".join(f"{k} {v}" for k, v in sorted(summary["series"].items())) or "none"))
    for destination, states in sorted(summary["sends"].items()):
        print(f"send to {destination}: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    for item in summary["retrying"]:
        print(f"retrying    {item['file']} -> {item['destination']} ({item['attempts']} tries): {item['error']}")
    for item in summary["last_errors"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["at"]))
        print(f"{when} {item['kind']}: {item['message']}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from scanside.runtime.artifacts import read_manifest

    manifest = read_manifest(args.engine_dir, verify=args.verify)
    if args.json:
        print(json.dumps(manifest.to_json(), indent=2))
        return 0
    m = manifest
    size = "dynamic H/W" if m.dynamic else f"{m.height}x{m.width}"
    print(f"engine      {args.engine_dir}")
    print(f"precision   {m.precision.value}   opset {m.opset}   image {size}, {m.image_channels} channel(s)")
    print(f"conditioning {m.conditioning.value}   VAE factor {m.vae_factor}, scaling {m.vae_scaling_factor}")
    print(f"scheduler   {m.scheduler_config.get('_class_name', '?')}   source {m.source_hash[:16]}")
    fused = " (ONNX Runtime's MultiHeadAttention: not for TensorRT)" if m.attention.value == "fused" else ""
    print(f"attention   {m.attention.value}{fused}")
    if m.vae_affine:
        parity = m.vae_affine["parity"]
        print(f"VAE         a per-pixel affine map, run in numpy instead of its graphs (max|diff| "
              f"{parity['max_abs_diff']:.3g} vs torch, tolerance {parity['tolerance']:.3g})")
    if m.tiny_vae:
        q = m.tiny_vae["quality"]
        print(f"tiny VAE    {m.tiny_vae['source']} for {' and '.join(m.tiny_vae['components'])}: "
              f"round trip {q['tiny_round_trip_psnr_db']} dB (checkpoint's VAE "
              f"{q['full_round_trip_psnr_db']} dB), decode vs the checkpoint's "
              f"{q['tiny_decode_vs_full_psnr_db']} dB")
    if m.tuned_on:
        ranges = sorted({c.weight_range for c in m.components.values() if c.weight_range})
        print(f"tuned on    {m.tuned_on.get('host_class')} ({m.tuned_on.get('cpu')}): int8 "
              f"choices timed there; weights {'/'.join(ranges)} (s7: 7 bits, for x86 without VNNI)")
    print_accuracy(m)
    print("built with  " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))
    if args.verify:
        print("hashes      verified")
    from scanside.runtime.engines.tensorrt import cache_root, cached_plans

    for line in cached_plans(cache_root(Path(args.engine_dir), m.source_hash)):
        print(f"plan        {line}")
    return 0


def cmd_bench_series(args: argparse.Namespace) -> int:
    from scanside.bench import report
    from scanside.bench.machine import cpu_label
    from scanside.bench.series import run_series

    result = run_series(args.engine_dir, args.series, args.size or 512, args.threads,
                        args.workers)
    print(f"{result['slices']} slices of {result['size']}x{result['size']} CT through "
          f"`scanside enhance` (DICOM read, enhance, derived write), {result['precision']} "
          f"engine, model settings, {result['workers']} worker(s) x "
          f"{result['threads_per_worker']} thread(s): {result['slices_per_second']:.2f} slices/s, "
          f"{result['seconds_per_slice']:.3f} s per slice ({cpu_label(result['machine']['cpu'])})")
    if args.json:
        report.write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from scanside.bench import report
    from scanside.bench.harness import Settings, Task, run_bench

    if args.series:
        return cmd_bench_series(args)
    if args.engine_dir is None:
        from scanside.runtime.default import default_engine_dir

        args.engine_dir = default_engine_dir()

    settings = Settings(task=Task(args.task), size=args.size, steps=args.steps,
                        strength=args.strength, guidance=args.guidance, scheduler=args.scheduler,
                        backend=args.backend, repeat=args.repeat, warmup=args.warmup,
                        dicom=args.dicom, threads=args.threads, vae_tile=args.vae_tile)
    if args.peers and args.model is None:
        raise InputError("--peers: give --model MODEL_DIR, the checkpoint the engine was "
                         "exported from, so the peers run the same weights")
    result = run_bench(args.engine_dir, settings)
    if args.peers:
        from scanside.bench.peer_env import run_peers
        from scanside.files import folder_hash

        if folder_hash(args.model) != result["model_hash"]:
            raise InputError(f"--model: {args.model} is not the checkpoint {args.engine_dir} was "
                             "exported from (content hashes differ); peers must run the same weights")
        result["peers"] = run_peers(args.model, result["model_hash"], result["settings"],
                                    args.peers_python)
    print(report.table(result))
    if args.json:
        report.write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        report.plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


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
    settings = Settings(seed=args.seed, recipe=args.recipe,
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
    from scanside.training.evaluate import evaluate, table

    result = evaluate(args.engine_dir, pairs=args.pairs, split=args.split, workers=args.workers,
                      steps=args.steps, strength=args.strength, guidance=args.guidance,
                      seed=args.seed, ensemble=args.ensemble, consistency_px=args.consistency,
                      noise_factor=args.noise_factor,
                      skip=frozenset(args.skip or ()))
    print(table(result))
    if args.json:
        from scanside.bench.report import write_json

        write_json(result, args.json)
        print(f"wrote {args.json}")
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


def cmd_demo(args: argparse.Namespace) -> int:
    from scanside.demo import run_demo

    run_demo(args.workdir)
    return 0


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanside",
        description="Diffusion enhancement of medical images on the scanner PC or a Jetson: "
                    "export Stable Diffusion checkpoints to ONNX, run them without torch, read "
                    "and write DICOM, benchmark. Not a medical device.")
    parser.add_argument("--version", action="version", version=f"scanside {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="diffusers checkpoint -> ONNX engine directory")
    p.add_argument("model_dir", type=Path, help="diffusers Stable Diffusion folder")
    p.add_argument("--out", required=True, type=Path, help="engine directory to create")
    p.add_argument("--height", type=int, help="image height in pixels (default: the VAE's sample_size)")
    p.add_argument("--width", type=int, help="image width in pixels (default: the VAE's sample_size)")
    p.add_argument("--dynamic", action="store_true", help="dynamic H/W (256-1024) instead of static")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--concat-scale", type=float, default=1.0,
                   help="image-conditioned UNets: factor on the conditioning latent (default 1, as instruct-pix2pix)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="every component's precision (default fp32)")
    p.add_argument("--component-precision", metavar="NAME=P,...",
                   help="per-component override, e.g. unet=int8,vae_decoder=fp16")
    p.add_argument("--calibration", type=Path,
                   help="int8: folder of PNG or DICOM images from the real workload")
    p.add_argument("--synthetic-calibration", action="store_true",
                   help="int8 without real images: calibrate on synthetic phantoms (labelled so)")
    p.add_argument("--int8-activations", choices=["u8", "s8"], default="u8",
                   help="u8: asymmetric, ONNX Runtime's fast x86 path (default); s8: symmetric, "
                        "as TensorRT's explicit int8 requires")
    p.add_argument("--int8-weights", choices=["auto", "s8", "s7"], default="auto",
                   help="s8: full-range int8 weights (VNNI, AMX, ARM, TensorRT); s7: [-64, 64], "
                        "for x86 CPUs without VNNI, whose int8 kernels saturate on full-range "
                        "weights; auto (default): s7 if this CPU is one, else s8")
    p.add_argument("--attention", choices=["plain", "fused"], default="plain",
                   help="fused: the UNet's and VAE's attention as ONNX Runtime's MultiHeadAttention "
                        "(SD 1.5 at 512 px: far less memory, faster UNet steps; ONNX Runtime "
                        "only). plain (default): every backend, TensorRT included")
    p.add_argument("--tiny-vae", type=Path, metavar="DIR",
                   help="a TAESD folder (diffusers AutoencoderTiny, e.g. madebyollin/taesd saved "
                        "locally) run in place of the checkpoint's VAE: far faster, some quality "
                        "lost (measured, in the manifest)")
    p.add_argument("--tiny-vae-parts", choices=["both", "decoder"], default="both",
                   help="with --tiny-vae: replace encoder and decoder (default) or the decoder only")
    p.add_argument("--trt-compat", choices=["8.5"],
                   help="graphs TensorRT 8.5's parser takes (JetPack 5.1): LayerNormalization "
                        "decomposed")
    p.add_argument("--trtexec-script", type=Path, metavar="PATH",
                   help="also write the trtexec command lines that build this engine's plans")
    p.add_argument("--tensorrt", action="store_true",
                   help="also build the TensorRT plans now, on this machine's GPU (else they "
                        "are built on first use with --backend tensorrt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine directory")
    p.set_defaults(func=cmd_export)

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
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (a head node's address, 'auto', or none for a "
                        "local one); --out must be a path every node sees")
    add_workers(p, ray=True)
    p.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="--ray: CPUs reserved per actor (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="--ray: GPUs reserved per actor, for --backend cuda (default 0)")
    p.add_argument("--report", type=Path, help="--ray: write the run's report as JSON")
    p.set_defaults(func=cmd_enhance)

    p = sub.add_parser("serve", help="DICOM node: receive series (C-STORE), enhance each "
                                      "complete series, forward the results to PACS")
    p.add_argument("--spool", required=True, type=Path,
                   help="folder for received and derived instances and the journal (created 0700)")
    p.add_argument("--forward", action="append", required=True, metavar="AET@HOST:PORT",
                   help="destination of the derived series (repeatable)")
    add_node_options(p)
    p.add_argument("--ae-title", default="SCANSIDE", help="this node's AE title")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=11112)
    p.add_argument("--allow", action="append", metavar="AET[@HOST]",
                   help="only these senders (repeatable); others are rejected at association")
    p.add_argument("--tls-cert", type=Path, help="TLS certificate for incoming associations")
    p.add_argument("--tls-key", type=Path, help="its private key")
    p.add_argument("--tls-ca", type=Path, help="CA whose client certificates are required")
    add_sampling(p, guidance=1.0, strength=True)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("watch", help="enhance DICOM files dropped in a folder, once complete")
    p.add_argument("in_dir", type=Path, help="the folder files are dropped in (never modified)")
    p.add_argument("--out", required=True, type=Path, help="where derived series are written")
    p.add_argument("--spool", required=True, type=Path,
                   help="folder for the journal and copies of taken files (created 0700)")
    p.add_argument("--forward", action="append", metavar="AET@HOST:PORT",
                   help="also send the derived series here (repeatable)")
    p.add_argument("--stable", type=float, default=2.0, metavar="S",
                   help="a file is complete when its size and time are unchanged for S seconds")
    add_node_options(p)
    add_sampling(p, guidance=1.0, strength=True)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", help="a node's queue, backlog and last errors, from its journal")
    p.add_argument("--spool", required=True, type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("info", help="describe an engine directory")
    p.add_argument("engine_dir", type=Path)
    p.add_argument("--verify", action="store_true", help="re-hash every ONNX file")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="per-stage latency of an engine, against the peers")
    p.add_argument("engine_dir", type=Path, nargs="?", default=None,
                   help="engine directory (default: the built-in model)")
    p.add_argument("--task", choices=["enhance", "generate"], default="enhance")
    p.add_argument("--size", type=int, help="square image size in pixels (default: the engine's)")
    p.add_argument("--steps", type=positive_int, default=20)
    p.add_argument("--strength", type=strength_arg, default=0.3)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--scheduler", default=None, help="default: the model's own")
    add_backend(p)
    p.add_argument("--repeat", type=positive_int, default=3, help="timed runs (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--threads", type=positive_int, help="ONNX Runtime intra-op threads")
    add_vae_tile(p)
    p.add_argument("--dicom", type=Path, help="enhance this DICOM file, timing its read and write")
    p.add_argument("--series", type=positive_int, metavar="N",
                   help="instead: N slices of --size (default 512) CT through `scanside enhance` "
                        "with the model's own settings; reports slices per second")
    p.add_argument("--workers", type=positive_int,
                   help="--series: slices at once (default: as `scanside enhance`)")
    p.add_argument("--json", type=Path, help="write the full result as JSON")
    p.add_argument("--plot", type=Path, help="write a PNG chart of the stage breakdown")
    p.add_argument("--peers", action="store_true",
                   help="also time diffusers (torch) and Optimum's ORT pipeline on the same weights")
    p.add_argument("--model", type=Path, help="the checkpoint the engine came from (for --peers)")
    p.add_argument("--peers-python", type=Path,
                   help="python of an environment with the peers (default: this one if it has "
                        "them, else one scanside builds from bench/requirements-peers.txt)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="build, export and run the demo model end to end")
    p.add_argument("--workdir", type=Path, default=Path("scanside-demo"),
                   help="where the model, engine and images go (default ./scanside-demo)")
    p.set_defaults(func=cmd_demo)

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

    from scanside.training.train import Settings

    p = msub.add_parser("train-default", help="train the default low-dose CT model (resumable; "
                                              "needs the export and train extras)")
    p.add_argument("out_dir", type=Path, help="run folder: data, checkpoints, and model/ at the end")
    p.add_argument("--seed", type=int, default=Settings.seed, help="everything random follows it")
    p.add_argument("--recipe", default=Settings.recipe,
                   choices=[r.value for r in RecipeName if recipe(r).identity_vae],
                   help="the model's shape (ct-deep: more capacity, 1.6x the UNet time; ct-fast: no "
                        "full-resolution blocks on the way down, 0.7-0.9x the UNet time)")
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

    p = msub.add_parser("evaluate", help="quality figures of a CT engine on the held-out "
                                         "synthetic test set, against Gaussian and NLM filters")
    p.add_argument("engine_dir", type=Path, nargs="?", default=None,
                   help="engine directory (default: the built-in model)")
    p.add_argument("--pairs", type=positive_int, default=100, help="pairs (default 100)")
    p.add_argument("--split", choices=["test", "val"], default="test",
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
                        "slices, the held-out synthetic anatomy (repeatable)")
    p.add_argument("--json", type=Path, help="write the figures as JSON")
    p.set_defaults(func=cmd_models_evaluate)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # pydicom's log records quote element values, which may identify a patient.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ScansideError as exc:
        print(f"scanside {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ImportError as exc:
        if exc.name not in EXPORT_PACKAGES:
            raise
        print(f"scanside {args.command}: error: {exc.name} is not installed; this command "
              "needs the export extra: pip install 'scanside[export]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no partial output was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
