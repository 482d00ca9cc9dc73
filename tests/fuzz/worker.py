"""One fuzzing worker: runs ``scanside enhance CASE --out OUT`` in-process for each JSON line
on stdin and answers one JSON line: exit code, what it printed, any escaped exception, and its
peak memory for the case. A separate process, so the parent can time a case out (a hang) and
see a crash; in-process, so the engine loads once (``Pipeline.load`` is memoised here only).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import sys
import traceback
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) since the last reset, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    try:  # "5" resets VmHWM (Linux >= 4.0); without it the figure is the process's peak
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main() -> int:
    engine = sys.argv[1]
    from scanside.cli import main as scanside_main
    from scanside.runtime.pipeline import Pipeline

    load = functools.lru_cache(maxsize=2)(Pipeline.load.__func__)
    Pipeline.load = classmethod(lambda cls, *a, **k: load(cls, *a, **k))
    for line in sys.stdin:
        job = json.loads(line)
        out, err = io.StringIO(), io.StringIO()
        escaped = None
        reset_peak()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = scanside_main(["enhance", job["case"], "--out", job["out"], "--engine",
                                      engine, "--steps", "2", "--strength", "0.5"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - exactly what the fuzzer looks for
                code, escaped = None, traceback.format_exc()
        print(json.dumps({"code": code, "stdout": out.getvalue()[-4000:],
                          "stderr": err.getvalue()[-4000:], "traceback": escaped,
                          "peak_mb": peak_rss_mb()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
