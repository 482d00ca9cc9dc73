"""What the node's web page costs the node in CPU (docs/benchmarks.md, "The node's web page").

    python bench/experiments/node_page_cpu.py [--slices 100] [--size 512] [--seconds 30]

A node (`scanside serve --http`, built-in model) receives a synthetic CT series from dcmtk's
storescu and enhances it; its forwarding destination does not answer, so it keeps retrying,
as a node with a PACS down does. Then the node's own CPU time (user + system, from /proc) is
read over ``--seconds`` with nobody on the page and over as long again with the benchmark's
page client (scanside.bench.node.PageClient: overview, metrics, the series' slice list and one
slice's layers every second). Needs Debian's dcmtk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from scanside.bench import machine, report
from scanside.bench.node import PageClient
from scanside.bench.orthanc import free_port
from scanside.bench.series import write_series


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def share(pid: int, seconds: float) -> float:
    """The process's CPU time over ``seconds`` of wall time, in cores."""
    cpu, wall = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu) / (time.monotonic() - wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in"
        source.mkdir()
        write_series(source, args.slices, args.size)
        port, web = free_port(), free_port()
        node = subprocess.Popen(
            [sys.executable, "-m", "scanside", "serve", "--spool", f"{tmp}/spool", "--host",
             "127.0.0.1", "--port", str(port), "--forward", f"DOWN@127.0.0.1:{free_port()}",
             "--series-idle", "1", "--http", f"127.0.0.1:{web}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(5)
            subprocess.run(["/usr/bin/storescu", "-aec", "SCANSIDE", "127.0.0.1", str(port),
                            *sorted(map(str, source.iterdir()))], check=True, capture_output=True)
            overview = f"http://127.0.0.1:{web}/overview.json"
            while True:
                counts = json.loads(urllib.request.urlopen(overview).read())["instances"]
                if counts["enhanced"] + counts["forwarded"] >= args.slices:
                    break
                time.sleep(1)
            time.sleep(5)
            alone = share(node.pid, args.seconds)
            client = PageClient(f"http://127.0.0.1:{web}")
            client.start()
            with_page = share(node.pid, args.seconds)
            page = client.stop()
        finally:
            node.terminate()
            node.wait(timeout=60)
    result = {"slices": args.slices, "size": args.size, "seconds": args.seconds,
              "node_cores_alone": alone, "node_cores_with_page": with_page,
              "page_cores": with_page - alone, "page": page, "machine": machine.describe()}
    print(f"node alone {100 * alone:.1f} % of a core; with the page polled each second "
          f"{100 * with_page:.1f} % ({page['requests']} requests, median "
          f"{1000 * page['median_s']:.0f} ms): the page costs {100 * (with_page - alone):.1f} % "
          "of one core")
    if args.json:
        report.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
