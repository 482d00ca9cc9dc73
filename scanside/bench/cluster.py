"""Throughput of the Ray path against `scanside enhance` on this machine
(``python -m scanside.bench.cluster``; needs the cluster extra).

One synthetic CT series through: `scanside enhance` in-process (one Pipeline, ONNX Runtime on
every core); the Ray path on one local node (``--workers`` actors with one core each); and on
two Ray node processes on this machine (a head and a worker node, one core each, loopback).
Same cores throughout, so the differences are the Ray path's overhead. Reported: wall time
from the call to the last output, slices per second, and the time to the first output.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from .orthanc import free_port
from .raynode import RayNode, temp_dir
from .series import write_series

# A private loopback cluster: no token to share between its nodes and the driver.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def timed_local(source: Path, out: Path, engine: Optional[Path]) -> dict[str, Any]:
    from scanside import Pipeline
    from scanside.dicom import enhance_series

    started = time.perf_counter()
    pipe = Pipeline.load(engine)
    report = enhance_series([source], pipe, out, progress=False)
    return {"seconds": time.perf_counter() - started, "slices": len(report.written)}


def timed_ray(source: Path, out: Path, engine: Optional[Path], address: Optional[str],
              workers: int) -> dict[str, Any]:
    from scanside.cluster import enhance_archive

    started = time.perf_counter()
    report = enhance_archive([source], out, engine=engine, address=address, workers=workers)
    return {"seconds": time.perf_counter() - started, "slices": len(report.written),
            "first_output_s": report.first_output_s}


def run(count: int, size: int, engine: Optional[Path], workers: int) -> dict[str, Any]:
    import ray

    from . import machine

    os.environ.update(RAY_ENV)
    results: dict[str, Any] = {"slices": count, "size": size, "workers": workers,
                               "machine": machine.describe()}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in"
        source.mkdir()
        write_series(source, count, size)
        results["local"] = timed_local(source, Path(tmp) / "local", engine)
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        results["ray_one_node"] = timed_ray(source, Path(tmp) / "one", engine, None, workers)
        ray.shutdown()
        port = free_port()
        # The benchmark's own two nodes, in a session folder of their own (out of /tmp/ray,
        # where `--ray auto` looks) and stopped by ending their sessions: never `ray stop`,
        # which stops every Ray on the machine.
        env = {**os.environ, **RAY_ENV}
        sessions = temp_dir()
        nodes = [RayNode("--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                         "--num-cpus", "1", "--include-dashboard", "false", "--temp-dir",
                         sessions, env=env)]
        try:
            nodes.append(RayNode("--address", f"127.0.0.1:{port}", "--node-ip-address",
                                 "127.0.0.1", "--num-cpus", str(workers - 1), env=env))
            results["ray_two_nodes"] = timed_ray(source, Path(tmp) / "two", engine,
                                                 f"127.0.0.1:{port}", workers)
        finally:
            ray.shutdown()
            for node in reversed(nodes):
                node.stop()
    base = results["local"]["seconds"]
    for key in ("ray_one_node", "ray_two_nodes"):
        results[key]["overhead"] = results[key]["seconds"] / base - 1
    return results


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scanside.bench.cluster", description=__doc__)
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--engine", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(args.slices, args.size, args.engine, args.workers)
    for key in ("local", "ray_one_node", "ray_two_nodes"):
        r = result[key]
        extra = (f", overhead {100 * r['overhead']:+.0f} %, first output after "
                 f"{r['first_output_s']:.1f} s" if "overhead" in r else "")
        print(f"{key}: {r['slices']} slices in {r['seconds']:.1f} s "
              f"({r['slices'] / r['seconds']:.2f} slices/s){extra}")
    if args.json:
        from scanside.runtime.default import default_engine_dir

        from . import report

        report.write_json(result, args.json, engine=args.engine or default_engine_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
