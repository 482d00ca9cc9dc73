"""An output folder that fills up or turns read-only mid-run: a clear error naming it (exit 3),
no partial file, inputs untouched, and a rerun on a healthy folder resumes.

A real small filesystem is used: a tmpfs mounted for the test (as root, or inside a user and
mount namespace with ``unshare -rm`` where user namespaces are allowed); where neither is
possible the tests skip and say why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from .conftest import ct_phantom, ct_slice

REPO = Path(__file__).resolve().parents[2]


def mount_prefix(tmp_path: Path) -> list[str]:
    """How to run a shell that may mount a tmpfs: directly as root, else in a namespace."""
    probe = tmp_path / "probe"
    probe.mkdir()
    for prefix in ([], ["unshare", "-rm"]):
        if prefix and shutil.which("unshare") is None:
            continue
        if not prefix and os.geteuid() != 0:
            continue
        script = f"mount -t tmpfs -o size=64k tmpfs {probe} && umount {probe}"
        if subprocess.run([*prefix, "sh", "-c", script], capture_output=True).returncode == 0:
            return prefix
    pytest.skip("cannot mount a tmpfs here (not root, no user namespaces); the disk-full and "
                "read-only tests need one")


def run_in_small_fs(tmp_path: Path, size: str, engine: Path, between: str = "") -> tuple:
    """``scanside enhance`` of 12 slices into a tmpfs of ``size`` mounted at OUT; ``between``
    runs in the background once the first output exists (e.g. a read-only remount)."""
    prefix = mount_prefix(tmp_path)
    uid = generate_uid()
    inputs = tmp_path / "in"
    for n in range(12):
        ct_slice(inputs / f"s{n:02d}.dcm", ct_phantom(128, seed=n), float(n), n + 1, uid)
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    out = tmp_path / "out"
    out.mkdir()
    command = (f"{sys.executable} -m scanside.cli enhance {inputs} --out {out} --engine {engine} "
               "--steps 20 --strength 0.5")
    watcher = ""
    if between:
        watcher = (f"( while [ -z \"$(find {out} -name 'IM*.dcm' | head -1)\" ]; do sleep 0.01; "
                   f"done; {between} ) & ")
    # The listing runs inside the namespace, where the tmpfs is visible.
    script = (f"mount -t tmpfs -o size={size} tmpfs {out} && {watcher}{command}; code=$?; wait; "
              f"echo EXIT=$code; find {out} -type f; umount {out} 2>/dev/null; exit 0")
    result = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    code = int(result.stdout.split("EXIT=")[1].split()[0])
    files = result.stdout.split("EXIT=")[1].split()[1:]
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before  # inputs untouched
    return code, result.stdout, result.stderr, files, out


@pytest.mark.slow
def test_a_full_disk_stops_with_a_clear_error_and_no_partial_file(tiny_engine, tmp_path):
    # 128 px int16 slices are ~33 kB each: a 200 kB filesystem takes a few, then is full.
    code, stdout, stderr, files, out = run_in_small_fs(tmp_path, "200k", tiny_engine)
    assert code == 3, stderr
    assert f"--out: cannot write {out}" in stderr and "No space left on device" in stderr
    assert "run the same command again to resume" in stderr
    assert files and all(Path(f).name.startswith("IM") and f.endswith(".dcm") for f in files)
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_a_folder_turning_read_only_mid_run(tiny_engine, tmp_path):
    code, stdout, stderr, files, out = run_in_small_fs(
        tmp_path, "8m", tiny_engine, between=f"mount -o remount,ro {tmp_path / 'out'}")
    assert code == 3, stderr
    assert "Read-only file system" in stderr and f"cannot write {out}" in stderr
    # A temporary file created before the remount cannot be deleted on a read-only disk; it
    # is a dot-file the next run removes (tested in test_resume). Finished files are whole.
    finished = [f for f in files if not Path(f).name.startswith(".")]
    assert finished and all(Path(f).name.startswith("IM") for f in finished)
    assert "Traceback" not in stderr
