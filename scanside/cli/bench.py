"""`scanside bench`: per-stage latency of an engine, against the peers; series throughput."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanside.errors import InputError

from .options import add_backend, add_vae_tile, gpu_options, positive_int, strength_arg


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """`scanside bench` on the subcommand parser ``sub``."""
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
                        "them, else one scanside builds from scanside/bench/requirements-peers.txt)")
    p.set_defaults(func=cmd_bench)


def cmd_bench_series(args: argparse.Namespace) -> int:
    from scanside.bench import report
    from scanside.bench.machine import cpu_label
    from scanside.bench.series import run_series

    result = run_series(args.engine_dir, args.series, args.size or 512, args.threads,
                        args.workers, backend=args.backend, gpu=gpu_options(args))
    print(f"{result['slices']} slices of {result['size']}x{result['size']} CT through "
          f"`scanside enhance` (DICOM read, enhance, derived write), {result['precision']} "
          f"engine on {result['backend']}, model settings, {result['workers']} worker(s) x "
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
                        dicom=args.dicom, threads=args.threads, vae_tile=args.vae_tile,
                        gpu=gpu_options(args))
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
