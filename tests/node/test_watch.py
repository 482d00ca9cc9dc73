"""Watch mode: files dropped in a folder are taken once complete — a slow writer's file only
when it stops changing, a NAME.part only once renamed — enhanced into --out, each once, even
across a SIGKILL; the dropped files are never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.dicom.conftest import partial_files

from .conftest import REPO, ct_series, status, wait_for


def watch(tiny_engine: Path, tmp_path: Path, index: int) -> subprocess.Popen:
    log = open(tmp_path / f"watch-{index}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "scanside", "watch", str(tmp_path / "drop"), "--out",
         str(tmp_path / "out"), "--spool", str(tmp_path / "spool"), "--engine", str(tiny_engine),
         "--steps", "2", "--strength", "0.5", "--series-idle", "1", "--stable", "0.5"],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_dropped_files_are_taken_when_complete_and_once(tiny_engine, tmp_path):
    sources = ct_series(tmp_path / "made", 6)
    drop = tmp_path / "drop"
    drop.mkdir()
    node = watch(tiny_engine, tmp_path, 0)
    try:
        for path in sources[:3]:  # copied whole
            (drop / path.name).write_bytes(path.read_bytes())
        part = drop / (sources[3].name + ".part")  # written as .part, then renamed
        part.write_bytes(sources[3].read_bytes())
        # A slow writer: 8 chunks 0.2 s apart, 1.6 s in all, each pause shorter than --stable.
        data = sources[4].read_bytes()
        with open(drop / sources[4].name, "wb") as f:
            for k in range(8):
                f.write(data[k * len(data) // 8:(k + 1) * len(data) // 8])
                f.flush()
                time.sleep(0.2)
        time.sleep(1.0)  # the .part file waits longer than --stable: still not taken
        part.rename(drop / sources[3].name)
        wait_for(lambda: len(list((tmp_path / "out").rglob("*.dcm"))) == 5, 60, "5 outputs")
        node.send_signal(signal.SIGKILL)
        node.wait()
        node = watch(tiny_engine, tmp_path, 1)  # a restart takes nothing twice
        (drop / sources[5].name).write_bytes(sources[5].read_bytes())
        wait_for(lambda: len(list((tmp_path / "out").rglob("*.dcm"))) == 6, 60, "6 outputs")
        time.sleep(2.0)  # time to take anything a second time, were it to
    finally:
        node.terminate()
        node.wait(timeout=30)
    outputs = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(outputs) == 6 and len({p.parent for p in outputs}) == 1
    for path in outputs:
        assert pydicom.dcmread(path).pixel_array.shape == (64, 64)  # whole files were taken
    assert {p.name: p.read_bytes() for p in drop.iterdir()} == {
        p.name: p.read_bytes() for p in sources}  # the dropped files, untouched
    state = status(tmp_path / "spool")
    assert state["instances"] == {"enhanced": 6}
    # The half-written file was never looked at (it would have been refused as truncated).
    assert not [e for e in state["last_errors"] if e["kind"] == "refused"]


@pytest.mark.slow
def test_watch_killed_at_twenty_points_takes_every_file_once(tiny_engine, tmp_path):
    """Files keep arriving while the watcher is SIGKILLed at 20 seeded moments and restarted:
    every file ends as one derived instance of one series, none twice, no partial file."""
    import random

    rng = random.Random(2027)
    sources = ct_series(tmp_path / "made", 20)
    drop = tmp_path / "drop"
    drop.mkdir()
    node = watch(tiny_engine, tmp_path, 0)
    try:
        for kill, path in enumerate(sources):
            (drop / path.name).write_bytes(path.read_bytes())
            time.sleep(rng.uniform(0.0, 2.5))  # taking, enhancing or idle when the kill lands
            node.send_signal(signal.SIGKILL)
            node.wait()
            node = watch(tiny_engine, tmp_path, kill + 1)
        wait_for(lambda: status(tmp_path / "spool")["instances"] == {"enhanced": 20}, 120,
                 "all 20 files enhanced")
    finally:
        node.terminate()
        node.wait(timeout=30)
    outputs = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(outputs) == 20 and len({p.parent for p in outputs}) == 1
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in outputs}
    assert len(uids) == 20
    assert not partial_files(tmp_path)


@pytest.mark.slow
def test_watch_serves_the_page_too(tiny_engine, tmp_path):
    """`scanside watch --http`: the same page for a drop folder (no destinations: a series is
    done once enhanced)."""
    import json
    import urllib.request

    from scanside.bench.orthanc import free_port

    (tmp_path / "drop").mkdir()
    port = free_port()
    log = open(tmp_path / "watch-web.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanside", "watch", str(tmp_path / "drop"), "--out",
         str(tmp_path / "out"), "--spool", str(tmp_path / "spool"), "--engine", str(tiny_engine),
         "--steps", "2", "--strength", "0.5", "--series-idle", "1", "--stable", "0.5",
         "--http", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})

    def overview():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/overview.json", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    try:
        wait_for(overview, 60, "the page")
        ct_series(tmp_path / "drop", 3, size=32)
        done = wait_for(lambda: (o := overview()) and o["instances"]["enhanced"] == 3 and o,
                        120, "3 enhanced instances on the page")
        (row,) = done["series_rows"]
        assert (row["instances"], row["outputs"], row["state"]) == (3, 3, "enhanced")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    refused = subprocess.run(
        [sys.executable, "-m", "scanside", "watch", str(tmp_path / "drop"), "--out",
         str(tmp_path / "out2"), "--spool", str(tmp_path / "spool2"), "--tls-cert", "c.pem"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert refused.returncode == 2 and "give --http too" in refused.stderr
