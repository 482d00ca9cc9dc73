"""How fast the node's web page answers with a full journal (``python -m scanside.bench.web``).

A spool is filled as a node that has run for a while leaves it: ``--instances`` received CT
files (real files, 64², in series of ``--per-series``), each enhanced, a derived file per
instance sent to one destination (a tenth of them after retries), and a few hundred events.
The page is then served as ``scanside serve --http`` serves it (uvicorn in a thread, the
built-in model's description) and each route is asked ``--repeat`` times over HTTP from this
process: the first request (headers not yet cached) and the median and worst of the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROUTES = ("/", "/overview.part", "/overview.json", "/metrics", "/healthz")


def fill_spool(spool: Path, instances: int, per_series: int) -> list[str]:
    """Write the files and the journal rows; returns the series UIDs."""
    from pydicom.uid import generate_uid

    from scanside.dicom.synthetic import simulated_ct
    from scanside.dicom.write import save
    from scanside.node import Journal

    journal = Journal(spool / "journal.sqlite")
    rng = np.random.default_rng(0)
    series_uids: list[str] = []
    now = time.time()
    rows, sends, outputs = [], [], []
    for start in range(0, instances, per_series):
        series = generate_uid()
        series_uids.append(series)
        folder = spool / "incoming" / series
        folder.mkdir(parents=True)
        for n in range(start, min(start + per_series, instances)):
            ds = simulated_ct(rng.normal(40, 20, (64, 64)).astype(np.float32),
                              "bench: a full journal", 0.7)
            ds.SeriesInstanceUID = series
            ds.InstanceNumber, ds.ImagePositionPatient = n - start + 1, [0, 0, float(n - start)]
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            save(ds, path)
            at = now - 7200 + 7200 * n / instances  # over the last two hours
            rows.append((str(ds.SOPInstanceUID), series, str(path), at, "enhanced", None, at + 5))
            derived = spool / "derived" / series / f"d{n}.dcm"
            outputs.append((str(derived), series, at + 5))
            retried = n % 10 == 0
            sends.append((str(derived), "PACS@10.0.0.5:104", series, "sent", 3 if retried else 1,
                          at + 6, None, at + 6))
    with journal.transaction() as db:
        db.executemany("INSERT INTO instances (sop_uid, series_uid, path, received, state, "
                       "error, done) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO outputs VALUES (?, ?, ?)", outputs)
        db.executemany("INSERT INTO sends VALUES (?, ?, ?, ?, ?, ?, ?, ?)", sends)
        last_of: dict[str, float] = {}
        for row in rows:  # each series' last arrival
            last_of[row[1]] = max(row[3], last_of.get(row[1], row[3]))
        for series in series_uids:
            last = last_of[series]
            db.execute("INSERT INTO series (series_uid, last_received, state, started_at, "
                       "enhanced_at, forwarded_at) VALUES (?, ?, 'enhanced', ?, ?, ?)",
                       (series, last, last + 1, last + 5, last + 6))
        db.executemany("INSERT INTO events VALUES (?, ?, ?)",
                       [(now - i, "refused", f"incoming/{i}.dcm: not an image") for i in range(300)])
    journal.close()
    return series_uids


def run_web_bench(instances: int, per_series: int, repeat: int) -> dict[str, Any]:
    from scanside import Pipeline
    from scanside.node import Node, NodeSettings, Peer
    from scanside.node.web import HttpSettings, start_web

    from . import machine

    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp) / "spool"
        (spool / "incoming").mkdir(parents=True)
        started = time.perf_counter()
        fill_spool(spool, instances, per_series)
        filled = time.perf_counter() - started
        node = Node(NodeSettings(spool=spool, forward=[Peer("PACS", "10.0.0.5", 104)]),
                    Pipeline.load(None))
        node.start(listen=False)
        web = start_web(node, HttpSettings(port=0))
        try:
            routes: dict[str, Any] = {}
            for route in ROUTES:
                routes[route] = timed(web.url.rstrip("/") + route, repeat)
            with urllib.request.urlopen(web.url + "overview.json") as answer:
                key = json.loads(answer.read())["series_rows"][0]["key"]
            for route in (f"/series/{key}", f"/series/{key}/slices.json",
                          f"/series/{key}/slice/0/source"):
                routes[route.replace(key, "KEY")] = timed(web.url.rstrip("/") + route, repeat)
        finally:
            web.stop()
            node.stop()
    return {"instances": instances, "per_series": per_series, "repeat": repeat,
            "fill_s": filled, "routes": routes, "machine": machine.describe()}


def timed(url: str, repeat: int) -> dict[str, float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as answer:
            answer.read()
        seconds.append(time.perf_counter() - started)
    rest = sorted(seconds[1:]) or seconds
    return {"first_ms": 1000 * seconds[0], "median_ms": 1000 * rest[len(rest) // 2],
            "max_ms": 1000 * rest[-1]}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scanside.bench.web", description=__doc__)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--per-series", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run_web_bench(args.instances, args.per_series, args.repeat)
    print(f"{args.instances} instances in {args.instances // args.per_series} series "
          f"(spool filled in {result['fill_s']:.0f} s):")
    for route, t in result["routes"].items():
        print(f"  {route:32s} first {t['first_ms']:7.1f} ms, median {t['median_ms']:6.1f} ms, "
              f"worst {t['max_ms']:6.1f} ms")
    if args.json:
        from . import report

        report.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
