"""Same input, engine and settings -> the same derived instances; a killed batch resumes
without redoing finished slices, without partial files, into one series."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from scanside import Pipeline
from scanside.dicom import enhance_series
from scanside.errors import InputError
from scanside.files import folder_lock

from .conftest import Identity, ct_phantom, ct_slice, partial_files

REPO = Path(__file__).resolve().parents[2]
# What may differ between two runs of the same work: when it was done.
TIMESTAMPS = {"InstanceCreationDate", "InstanceCreationTime", "ContributionDateTime"}
SAMPLING = dict(steps=4, strength=0.5, seed=3)


def series(folder: Path, count: int, size: int = 64) -> list[Path]:
    uid = generate_uid()
    return [ct_slice(folder / f"s{n:03d}.dcm", ct_phantom(size, seed=n), float(n), n + 1, uid)
            for n in range(count)]


def without_timestamps(ds: pydicom.Dataset) -> dict:
    """Every element's value, recursively, leaving out the timestamps."""
    out = {}
    for elem in ds:
        if elem.keyword in TIMESTAMPS:
            continue
        if elem.VR == "SQ":
            out[elem.tag] = [without_timestamps(item) for item in elem.value]
        else:
            out[elem.tag] = elem.value
    return out


def outputs(out: Path) -> dict[str, Path]:
    return {str(p.relative_to(out)): p for p in sorted(out.rglob("*.dcm"))}


def test_the_same_work_twice_gives_the_same_instances(tiny_engine, tmp_path):
    sources = series(tmp_path / "in", 3)
    pipe = Pipeline.load(tiny_engine)
    first = enhance_series(sources, pipe, tmp_path / "a", progress=False, **SAMPLING)
    second = enhance_series(sources, pipe, tmp_path / "b", progress=False, **SAMPLING)
    a, b = outputs(tmp_path / "a"), outputs(tmp_path / "b")
    assert len(first.written) == len(second.written) == 3 and a.keys() == b.keys()
    for name in a:
        x, y = pydicom.dcmread(a[name]), pydicom.dcmread(b[name])
        assert x.PixelData == y.PixelData  # byte-identical pixels
        assert x.SOPInstanceUID == y.SOPInstanceUID and x.SeriesInstanceUID == y.SeriesInstanceUID
        assert without_timestamps(x) == without_timestamps(y)
    # Other settings are other work: new UIDs, so a PACS keeps both.
    other = enhance_series(sources, pipe, tmp_path / "c", progress=False, **{**SAMPLING, "seed": 4})
    assert {pydicom.dcmread(p).SOPInstanceUID for p in other.written}.isdisjoint(
        {pydicom.dcmread(p).SOPInstanceUID for p in a.values()})


def enhance_cli(inputs: Path, out: Path, engine: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "scanside.cli", "enhance", str(inputs),
                             "--out", str(out), "--engine", str(engine), "--steps", "20",
                             "--strength", "0.5", "--seed", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_a_batch_killed_with_sigkill_resumes_where_it_stopped(tiny_engine, tmp_path):
    count = 40
    series(tmp_path / "in", count)
    out = tmp_path / "out"
    run = enhance_cli(tmp_path / "in", out, tiny_engine)
    deadline = time.monotonic() + 120
    while len(list(out.rglob("IM*.dcm"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.communicate()
    finished = outputs(out)
    assert 3 <= len(finished) < count, "the kill must land mid-run"
    before = {name: path.read_bytes() for name, path in finished.items()}
    # What a kill inside a write leaves: the temporary file of atomic_path.
    stale = next(iter(finished.values())).parent / ".IM00040.dcm.k1ll3d.partial"
    stale.write_bytes(b"half a file")

    rerun = enhance_cli(tmp_path / "in", out, tiny_engine)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert f"{count - len(finished)} file(s) written, {len(finished)} already done" in stdout
    done = outputs(out)
    assert len(done) == count and len({p.parent for p in done.values()}) == 1  # one series
    assert not partial_files(out)
    for name, data in before.items():  # finished slices were not redone
        assert done[name].read_bytes() == data
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in done.values()}
    assert len(uids) == count

    # The resumed series is the series an uninterrupted run writes.
    clean = enhance_cli(tmp_path / "in", tmp_path / "clean", tiny_engine)
    assert clean.wait(timeout=300) == 0
    for name, path in outputs(tmp_path / "clean").items():
        assert pydicom.dcmread(path).PixelData == pydicom.dcmread(done[name]).PixelData


def test_a_file_that_is_not_ours_is_never_replaced(tmp_path):
    sources = series(tmp_path / "in", 2)
    out = tmp_path / "out"
    first = enhance_series(sources, Identity(), out, progress=False)
    foreign = first.written[0]
    shutil.copy(sources[1], foreign)  # someone else's file where ours would go
    report = enhance_series(sources, Identity(), out, progress=False)
    assert [p for p, _ in report.failures] == [sources[0]]
    assert "already exists and holds another instance" in report.failures[0][1]
    assert foreign.read_bytes() == sources[1].read_bytes()
    replaced = enhance_series(sources, Identity(), out, progress=False, overwrite=True)
    assert replaced.ok and replaced.written == [foreign]


def test_one_output_folder_one_writer(tmp_path):
    sources = series(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out, "--out"):
        with pytest.raises(InputError, match="being written by another scanside process"):
            enhance_series(sources, Identity(), out, progress=False)
    assert enhance_series(sources, Identity(), out, progress=False).ok
