"""The node's latency and memory, end to end against a real PACS (``python -m
scanside.bench.node``; needs Debian's orthanc and dcmtk).

A synthetic CT series is pushed with dcmtk's storescu to ``scanside serve`` (the built-in
model unless --engine), which forwards to Orthanc. Reported: the series latency from the last
acknowledged slice to the last instance stored in Orthanc, and its parts from the node's
journal (idle wait, enhancement, sending); the node's overhead beyond the idle wait against
``scanside enhance`` on the same files plus storescu sending its results to Orthanc directly; the node's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from .orthanc import Orthanc, free_port
from .series import write_series

STORESCU = "/usr/bin/storescu"


def peak_rss_mb(pid: int) -> float:
    """A running process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def enhance_seconds(folder: Path, out: Path, engine: Optional[Path]) -> float:
    """`scanside enhance` on the same files: its own per-image time x images (engine load
    excluded, as the node has its engine loaded)."""
    args = [sys.executable, "-m", "scanside", "enhance", str(folder), "--out", str(out)]
    args += ["--engine", str(engine)] if engine else []
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    match = re.search(r"(\d+) file\(s\) written.*?, ([\d.]+) s per image", result.stdout)
    return int(match.group(1)) * float(match.group(2))


def direct_send_seconds(files: list[Path], root: Path, count: int) -> float:
    """The same derived files sent by dcmtk's storescu straight to a fresh Orthanc: what the
    PACS and the network take without the node."""
    pacs = Orthanc(root / "orthanc-direct")
    try:
        started = time.time()
        subprocess.run([STORESCU, "-aec", "ORTHANC", "127.0.0.1", str(pacs.dicom_port),
                        *map(str, files)], capture_output=True, check=True)
        while pacs.count() < count:
            time.sleep(0.05)
        return time.time() - started
    finally:
        pacs.stop()


def run_node_bench(count: int, size: int, engine: Optional[Path] = None,
                   idle: float = 2.0) -> dict[str, Any]:
    from scanside.node import open_journal

    from . import machine

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "in"
        source.mkdir()
        write_series(source, count, size)
        pacs = Orthanc(root / "orthanc")
        port = free_port()
        spool = root / "spool"
        args = [sys.executable, "-m", "scanside", "serve",
                "--spool", str(spool), "--host", "127.0.0.1", "--port", str(port),
                "--forward", pacs.destination, "--series-idle", str(idle)]
        args += ["--engine", str(engine)] if engine else []
        node = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            for _ in range(120):  # until the node answers
                echo = subprocess.run(["/usr/bin/echoscu", "-aec", "SCANSIDE", "127.0.0.1",
                                       str(port)], capture_output=True)
                if echo.returncode == 0:
                    break
                time.sleep(0.5)
            sent = subprocess.run([STORESCU, "-aec", "SCANSIDE", "127.0.0.1", str(port),
                                   *sorted(map(str, source.iterdir()))], capture_output=True)
            if sent.returncode:
                raise RuntimeError(f"storescu failed: {sent.stderr.decode()[-300:]}")
            acknowledged = time.time()
            while pacs.count() < count:
                time.sleep(0.05)
            stored = time.time()
            peak = peak_rss_mb(node.pid)
        finally:
            node.terminate()
            node.communicate(timeout=120)
            pacs.stop()
        journal = open_journal(spool)
        timeline = journal.timeline()[0]
        journal.close()
        enhance = enhance_seconds(source, root / "enhance-out", engine)
        direct = direct_send_seconds(sorted((root / "enhance-out").rglob("*.dcm")), root, count)
    latency = stored - acknowledged
    parts = {"idle_wait": timeline["started"] - timeline["last_received"],
             "enhancement": timeline["enhanced"] - timeline["started"],
             "sending": stored - timeline["enhanced"]}
    beyond_idle = latency - parts["idle_wait"]
    return {"slices": count, "size": size, "series_idle_s": idle, "latency_s": latency,
            "parts_s": parts, "scanside_enhance_s": enhance,
            "storescu_to_orthanc_s": direct,
            "node_overhead_beyond_idle": beyond_idle / (enhance + direct) - 1,
            "node_peak_rss_mb": peak, "machine": machine.describe()}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scanside.bench.node", description=__doc__)
    parser.add_argument("--slices", type=int, nargs="+", default=[100])
    parser.add_argument("--size", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--engine", type=Path)
    parser.add_argument("--idle", type=float, default=2.0, help="--series-idle of the node")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = []
    for size in args.size:
        for count in args.slices:
            result = run_node_bench(count, size, args.engine, args.idle)
            p = result["parts_s"]
            print(f"{count} x {size}^2: latency {result['latency_s']:.1f} s (idle "
                  f"{p['idle_wait']:.1f}, enhancement {p['enhancement']:.1f}, sending "
                  f"{p['sending']:.1f}); scanside enhance {result['scanside_enhance_s']:.1f} s + "
                  f"storescu to Orthanc {result['storescu_to_orthanc_s']:.1f} s; "
                  f"node overhead beyond the idle wait {100 * result['node_overhead_beyond_idle']:+.0f} %; "
                  f"node peak RSS {result['node_peak_rss_mb']:.0f} MB", flush=True)
            results.append(result)
    if args.json:
        from scanside.runtime.default import default_engine_dir

        from . import report

        report.write_json({"runs": results}, args.json,
                          engine=args.engine or default_engine_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
