"""One engine's UNet: seconds per image against intra-op threads, batch size and calls at once.

What decides ``--workers`` (scanside.runtime.parallel) and whether slices or ensemble views
are worth batching into one call. Run on the machine in question:

    python -m scanside.bench.concurrency [ENGINE_DIR] [--size 512] [--repeat 3] [--json f]

Each row is the median over ``--repeat`` timed rounds after one warm-up, in seconds per image
(one UNet evaluation of one image); all rows in one process, one after another.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

if TYPE_CHECKING:
    from scanside.runtime.artifacts import Manifest


def unet_feeds(m: "Manifest", size: int, batch: int) -> dict[str, np.ndarray]:
    from scanside.runtime.iospec import size_bindings

    spec = m.components["unet"].spec
    bindings = size_bindings(size, size, m.vae_factor, batch=batch, unet_batch=batch)
    return spec.dummy_inputs({**bindings, "vocab": 2})


def per_image(fn: Callable[[], None], images: int, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) / images)
    return statistics.median(times)


def measure(engine_dir: Optional[Path], size: int = 512, repeat: int = 3,
            batches: tuple[int, ...] = (1, 2, 4)) -> dict[str, Any]:
    from scanside.runtime.artifacts import read_manifest
    from scanside.runtime.default import default_engine_dir
    from scanside.runtime.engines import Backend, open_engine
    from scanside.runtime.parallel import physical_cores

    from . import machine

    engine_dir = engine_dir or default_engine_dir()
    m = read_manifest(engine_dir)
    cores = physical_cores()
    rows = []

    def engine(threads: int):
        return open_engine(engine_dir, m.components["unet"], m.source_hash, Backend.CPU, threads)

    for threads in sorted({1, cores}):
        unet = engine(threads)
        for batch in batches:
            feeds = unet_feeds(m, size, batch)
            rows.append({"threads": threads, "batch": batch, "calls_at_once": 1,
                         "seconds_per_image": per_image(lambda: unet.run(feeds), batch, repeat)})
    if cores > 1:
        unet = engine(1)
        feeds = unet_feeds(m, size, 1)
        with ThreadPoolExecutor(cores) as pool:
            def together() -> None:
                list(pool.map(lambda _: unet.run(feeds), range(cores)))
            rows.append({"threads": 1, "batch": 1, "calls_at_once": cores,
                         "seconds_per_image": per_image(together, cores, repeat)})
    return {"engine": str(engine_dir), "size": size, "repeat": repeat, "rows": rows,
            "machine": machine.describe()}


def main(argv: Optional[list[str]] = None) -> int:
    from . import report
    from .machine import cpu_label

    p = argparse.ArgumentParser(prog="python -m scanside.bench.concurrency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine_dir", type=Path, nargs="?", help="default: the built-in model")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    result = measure(args.engine_dir, args.size, args.repeat)
    print(f"UNet of {result['engine']} at {args.size}x{args.size} on "
          f"{cpu_label(result['machine']['cpu'])}")
    print("threads  batch  calls at once  s per image")
    for r in result["rows"]:
        print(f"{r['threads']:>7}  {r['batch']:>5}  {r['calls_at_once']:>13}  "
              f"{r['seconds_per_image']:.3f}")
    if args.json:
        report.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
