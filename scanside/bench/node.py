"""The node's latency and memory, end to end against a real PACS (``python -m
scanside.bench.node``; needs Debian's orthanc and dcmtk).

A synthetic CT series is pushed with dcmtk's storescu to ``scanside serve`` (the built-in
model unless --engine), which forwards to Orthanc. Reported: the series latency from the last
acknowledged slice to the last instance stored in Orthanc, and its parts from the node's
journal (idle wait, enhancement, sending); the node's overhead beyond the idle wait against
``scanside enhance`` on the same files plus storescu sending its results to Orthanc directly; the node's peak RSS (VmHWM).

``--http``: each run once without the web page and once with it (``serve --http``) while a
client polls it as an open page does, and harder: the overview fragment and /metrics every
second (the page itself refreshes every 3 s, Prometheus scrapes every 15 s by default) and,
once the series is listed, its viewer's slice list and every slice's source and enhanced
values (a person scrolling through the whole series), again each second. The client runs in
this process, not the node's: in use the browser is on another machine.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
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


class PageClient(threading.Thread):
    """What a person with the node's page open asks of it, each ``interval`` seconds: the
    overview's figures and the metrics; once a series is listed, its slices, one slice's
    layers per round through the whole series."""

    def __init__(self, base: str, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.base, self.interval = base, interval
        self.stopping = threading.Event()
        self.requests, self.seconds, self.errors = 0, [], 0

    def fetch(self, route: str) -> bytes:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(self.base + route, timeout=30) as answer:
                data = answer.read()
        except OSError:
            self.errors += 1
            return b""
        self.requests += 1
        self.seconds.append(time.perf_counter() - started)
        return data

    def run(self) -> None:
        index = 0
        while not self.stopping.wait(self.interval):
            self.fetch("/overview.part")
            self.fetch("/metrics")
            overview = json.loads(self.fetch("/overview.json") or b"{}")
            rows = overview.get("series_rows") or []
            if not rows:
                continue
            key = rows[0]["key"]
            slices = json.loads(self.fetch(f"/series/{key}/slices.json") or b"{}").get("slices")
            if slices:
                index = (index + 1) % len(slices)
                for layer in slices[index]["layers"]:
                    self.fetch(f"/series/{key}/slice/{index}/{layer}")

    def stop(self) -> dict[str, Any]:
        self.stopping.set()
        self.join(timeout=60)
        ordered = sorted(self.seconds)
        return {"requests": self.requests, "errors": self.errors,
                "median_s": ordered[len(ordered) // 2] if ordered else None,
                "max_s": ordered[-1] if ordered else None}


def run_node_bench(count: int, size: int, engine: Optional[Path] = None,
                   idle: float = 2.0, http: bool = False) -> dict[str, Any]:
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
        client = None
        if http:
            web = free_port()
            args += ["--http", f"127.0.0.1:{web}"]
            client = PageClient(f"http://127.0.0.1:{web}")
        node = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        page: dict[str, Any] = {}
        try:
            time.sleep(1.0)
            for _ in range(120):  # until the node answers
                echo = subprocess.run(["/usr/bin/echoscu", "-aec", "SCANSIDE", "127.0.0.1",
                                       str(port)], capture_output=True)
                if echo.returncode == 0:
                    break
                time.sleep(0.5)
            if client is not None:
                client.start()
            sent = subprocess.run([STORESCU, "-aec", "SCANSIDE", "127.0.0.1", str(port),
                                   *sorted(map(str, source.iterdir()))], capture_output=True)
            if sent.returncode:
                raise RuntimeError(f"storescu failed: {sent.stderr.decode()[-300:]}")
            acknowledged = time.time()
            while pacs.count() < count:
                time.sleep(0.05)
            stored = time.time()
            peak = peak_rss_mb(node.pid)
            if client is not None:
                page = client.stop()
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
    return {"slices": count, "size": size, "series_idle_s": idle, "http": http, "page": page,
            "latency_s": latency,
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
    parser.add_argument("--http", action="store_true",
                        help="each run without and with the web page, polled as an open page")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each configuration, alternating (medians compared)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = []
    for size in args.size:
        for count in args.slices:
            latencies: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeat):
                for http in (False, True) if args.http else (False,):
                    result = run_node_bench(count, size, args.engine, args.idle, http)
                    results.append(result)
                    latencies[http].append(result["latency_s"])
                    print_result(result)
            if args.http:
                without, with_page = (sorted(v)[len(v) // 2] for v in latencies.values())
                print(f"  the page adds {100 * (with_page / without - 1):+.1f} % to the median "
                      f"latency of {args.repeat} run(s) ({with_page:.1f} s against "
                      f"{without:.1f} s)", flush=True)
    if args.json:
        from scanside.runtime.default import default_engine_dir

        from . import report

        report.write_json({"runs": results}, args.json,
                          engine=args.engine or default_engine_dir())
    return 0


def print_result(result: dict[str, Any]) -> None:
    count, size, p = result["slices"], result["size"], result["parts_s"]
    print(f"{count} x {size}^2{' with the page' if result['http'] else ''}: latency "
          f"{result['latency_s']:.1f} s (idle {p['idle_wait']:.1f}, enhancement "
          f"{p['enhancement']:.1f}, sending {p['sending']:.1f}); scanside enhance "
          f"{result['scanside_enhance_s']:.1f} s + storescu to Orthanc "
          f"{result['storescu_to_orthanc_s']:.1f} s; node overhead beyond the idle wait "
          f"{100 * result['node_overhead_beyond_idle']:+.0f} %; node peak RSS "
          f"{result['node_peak_rss_mb']:.0f} MB", flush=True)
    if result["page"]:
        q = result["page"]
        print(f"  page: {q['requests']} requests, median {1000 * (q['median_s'] or 0):.0f} ms, "
              f"longest {1000 * (q['max_s'] or 0):.0f} ms, {q['errors']} errors", flush=True)

if __name__ == "__main__":
    sys.exit(main())
