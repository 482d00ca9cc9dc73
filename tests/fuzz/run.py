"""The fuzz run: mutated real DICOM files through ``scanside enhance``, each case judged.

    python -m tests.fuzz --cases 1000 --seed 0 --json fuzz-report.json

Every case must end as a written, valid derived instance (exit 0) or as scanside's own error
naming the file (exit 2), within the time limit, with no stray file in the output folder and
the input unchanged. Anything else is a finding: a traceback, exit 1 or 3, a hang, a crash of
the worker, a message without the file's name, a stray or invalid output, a changed input, a
peak memory above the limit. Seeds: pydicom's own test files (CT, MR in four encodings, RLE,
JPEG-LS, JPEG 2000) and scanside's synthetic CR (MONOCHROME1), multi-frame SC and Enhanced
CT. The engine is a tiny seeded model built from its recipe (no weights are fetched).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from threading import local
from typing import Optional

import pydicom

from .mutate import mutate

REPO = Path(__file__).resolve().parents[2]
PYDICOM_SEEDS = ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm",
                 "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "JPEG2000.dcm")
GOOD = ("written", "refused")
PEAK_LIMIT_MB = 2048  # a case above this allocated far more than any seed needs


@dataclass
class Case:
    number: int
    seed_file: str
    mutation: str
    description: str
    outcome: str = ""
    detail: str = ""
    code: Optional[int] = None
    peak_mb: float = 0.0
    seconds: float = 0.0


@dataclass
class Report:
    cases: list[Case] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(c.outcome for c in self.cases))

    def findings(self) -> list[Case]:
        return [c for c in self.cases if c.outcome not in GOOD]

    def to_json(self) -> dict:
        by_mutation: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        reasons: collections.Counter = collections.Counter()
        for c in self.cases:
            by_mutation[c.mutation.split("+")[0]][c.outcome] += 1
            if c.outcome == "refused":
                reasons[c.detail] += 1
        return {"cases": len(self.cases), "seconds": round(self.seconds, 1),
                "counts": self.counts(),
                "by_mutation": {k: dict(v) for k, v in sorted(by_mutation.items())},
                "refusal_reasons": dict(reasons.most_common()),
                "max_peak_mb": max((c.peak_mb for c in self.cases), default=0.0),
                "findings": [asdict(c) for c in self.findings()]}


# -- inputs --------------------------------------------------------------------------------
def write_seeds(folder: Path) -> list[Path]:
    """The seed files: pydicom's (from the installed wheel) and scanside's synthetic ones."""
    from tests.dicom.conftest import (
        enhanced_ct, multiframe_sc, pydicom_file, radiograph,
    )

    folder.mkdir(parents=True, exist_ok=True)
    seeds = []
    for name in PYDICOM_SEEDS:
        seeds.append(Path(shutil.copy(pydicom_file(name), folder / name)))
    seeds.append(radiograph(folder / "cr_mono1_15bit.dcm", size=96, bits=15))
    seeds.append(multiframe_sc(folder / "multiframe_sc.dcm"))
    seeds.append(enhanced_ct(folder / "enhanced_ct.dcm", frames=3, size=48))
    return seeds


def build_engine(folder: Path) -> Path:
    """The tiny test engine (seeded random weights, from its recipe), built once per folder."""
    engine = folder / "engine"
    if (engine / "manifest.json").is_file():
        return engine
    from scanside.export import export_model
    from scanside.training import build

    model = build("tiny", folder / "model", seed=0)
    export_model(model, engine)
    return engine


# -- the worker ----------------------------------------------------------------------------
class Worker:
    """A ``tests.fuzz.worker`` process; restarted after a hang or a crash."""

    def __init__(self, engine: Path) -> None:
        self.engine = engine
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.worker", str(self.engine)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, case: Path, out: Path, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"case": str(case), "out": str(out)}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return {"hang": True}
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            return {"crash": code}
        return json.loads(line)


# -- judging -------------------------------------------------------------------------------
def valid_output(path: Path, source_uid: Optional[str]) -> str:
    """'' if ``path`` is a readable derived instance with decodable pixels, else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - judging, not handling
        return f"unreadable output ({type(exc).__name__})"
    if "DERIVED" not in list(ds.get("ImageType", [])):
        return "output not marked DERIVED"
    if source_uid is not None and ds.SOPInstanceUID == source_uid:
        return "output reuses the source's SOP Instance UID"
    if pixels.shape[-2:] != (ds.Rows, ds.Columns):
        return "output pixel shape differs from Rows/Columns"
    return ""


def reason_of(stderr: str, case: Path) -> str:
    """The refusal's kind: the message after the file name, numbers and quotes blanked."""
    for line in stderr.splitlines():
        if str(case) in line and "failed:" in line:
            text = line.split(f"{case}: ", 2)[-1]
            text = re.sub(r"'[^']*'|\([^)]*\)|\d+", "#", text)
            return text.split(";")[0][:90]
    return "?"


def judge(case: Path, out: Path, result: dict, before: str) -> tuple[str, str]:
    try:
        with warnings.catch_warnings():  # pydicom quotes the damaged values it warns about
            warnings.simplefilter("ignore")
            source_uid = pydicom.dcmread(case, stop_before_pixels=True).get("SOPInstanceUID")
    except Exception:  # noqa: BLE001
        source_uid = None
    if hashlib.sha256(case.read_bytes()).hexdigest() != before:
        return "input-modified", ""
    if result.get("hang"):
        return "hang", ""
    if "crash" in result:
        return "crash", f"worker exit {result['crash']}"
    if result.get("traceback"):
        return "traceback", result["traceback"].strip().splitlines()[-1][:200]
    files = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    outputs = [p for p in files if p.suffix == ".dcm" and not p.name.startswith(".")]
    strays = [p.name for p in files if p not in outputs]
    if strays:
        return "stray-file", ", ".join(strays[:3])
    code, stderr = result.get("code"), result.get("stderr", "")
    if "internal error" in stderr:
        return "internal-error", reason_of(stderr, case)
    if result.get("peak_mb", 0) > PEAK_LIMIT_MB:
        return "memory", f"{result['peak_mb']:.0f} MB"
    if code == 0:
        if len(outputs) != 1:
            return "bad-output", f"{len(outputs)} outputs for one input"
        problem = valid_output(outputs[0], source_uid)
        return ("bad-output", problem) if problem else ("written", "")
    if code == 2:
        if outputs:
            return "stray-file", "output written for a refused input"
        if str(case) not in stderr:
            return "unnamed-error", stderr.strip().splitlines()[-1][:200] if stderr.strip() else ""
        return "refused", reason_of(stderr, case)
    return "wrong-exit", f"exit {code}: {stderr.strip()[-200:]}"


# -- the run -------------------------------------------------------------------------------
def run_fuzz(cases: int, seed: int, workdir: Path, engine: Optional[Path] = None,
             timeout: float = 60.0, jobs: int = 1, keep_findings: bool = True,
             echo=print) -> Report:
    workdir.mkdir(parents=True, exist_ok=True)
    engine = engine or build_engine(workdir)
    seeds = [(p.name, p.read_bytes()) for p in write_seeds(workdir / "seeds")]
    report = Report()
    threads = local()
    workers: list[Worker] = []

    def one(number: int) -> Case:
        if not hasattr(threads, "worker"):
            threads.worker = Worker(engine)
            workers.append(threads.worker)
        case_seed = seed * 1_000_003 + number
        name, data = seeds[number % len(seeds)]
        damaged, mutation, what = mutate(data, case_seed)
        folder = workdir / "cases" / f"case{number:05d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        path = folder / "in" / f"case{number:05d}.dcm"
        path.parent.mkdir()
        path.write_bytes(damaged)
        before = hashlib.sha256(damaged).hexdigest()
        started = time.perf_counter()
        result = threads.worker.run(path, folder / "out", timeout)
        case = Case(number, name, mutation, what, code=result.get("code"),
                    peak_mb=float(result.get("peak_mb") or 0.0),
                    seconds=time.perf_counter() - started)
        case.outcome, case.detail = judge(path, folder / "out", result, before)
        if case.outcome in GOOD or not keep_findings:
            shutil.rmtree(folder, ignore_errors=True)
        return case

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for i, case in enumerate(pool.map(one, range(cases)), 1):
                report.cases.append(case)
                if case.outcome not in GOOD:
                    echo(f"case {case.number} ({case.seed_file}, {case.description}): "
                         f"{case.outcome} {case.detail}")
                if i % 100 == 0:
                    echo(f"{i}/{cases} cases: {report.counts()}")
    finally:
        for worker in workers:
            worker.stop()
    report.seconds = time.perf_counter() - started
    return report


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--workdir", type=Path, default=None,
                        help="cases that found something are kept here (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="write the report as JSON")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scanside-fuzz-"))
    report = run_fuzz(args.cases, args.seed, workdir, timeout=args.timeout, jobs=args.jobs)
    summary = report.to_json()
    print(json.dumps({k: summary[k] for k in ("cases", "seconds", "counts", "max_peak_mb")},
                     indent=1))
    if args.json:
        from scanside.bench.report import write_json

        write_json(summary, args.json)  # with its provenance, as every result JSON
        print(f"wrote {args.json}")
    if report.findings():
        print(f"{len(report.findings())} finding(s); their cases are kept in {workdir / 'cases'}")
        return 1
    return 0
