"""The Ray path: a local cluster gives the same files as `scanside enhance` on one machine;
a rerun writes nothing again; relative paths and files a node cannot see; a cluster started
with plain `ray start --head`, with and without token authentication, joined by address;
Ray stays out of every other import. Every test that starts Ray runs under the session's
own HOME (tests/conftest.py ray_home), never the user's ~/.ray."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from scanside import Pipeline
from scanside.cli import main
from scanside.dicom import enhance_series
from tests.conftest import RayNode, free_port, ray_env, ray_has_token_auth, ray_temp_dir
from tests.dicom.conftest import partial_files
from tests.node.conftest import REPO, ct_series
from tests.test_store import bucket_uri

SETTINGS = dict(steps=2, strength=0.5, seed=1)


@pytest.fixture(scope="module")
def local_ray(ray_home):
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_AUTH_MODE", raising=False)  # a local cluster sets it here; undone after
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ray
        ray.shutdown()


def pixels(folder):
    return {p.relative_to(folder): pydicom.dcmread(p).PixelData for p in folder.rglob("*.dcm")}


@pytest.mark.slow
def test_a_local_cluster_writes_what_one_machine_writes(local_ray, tiny_engine, tmp_path, capsys):
    from scanside.cluster import enhance_archive

    ct_series(tmp_path / "in" / "a", 6)
    ct_series(tmp_path / "in" / "b", 4)
    single = enhance_series([tmp_path / "in"], Pipeline.load(tiny_engine), tmp_path / "single",
                            progress=False, **SETTINGS)
    report = enhance_archive([tmp_path / "in"], tmp_path / "ray", engine=tiny_engine, workers=2,
                             report_json=tmp_path / "report.json", **SETTINGS)
    assert report.ok and len(report.written) == len(single.written) == 10
    assert pixels(tmp_path / "ray") == pixels(tmp_path / "single")  # names and pixel bytes
    assert sorted(c["written"] for c in report.series.values()) == [4, 6]
    assert json.loads((tmp_path / "report.json").read_text())["images"] == 10
    # The same through the CLI: a rerun finds every slice done and writes nothing.
    code = main(["enhance", str(tmp_path / "in"), "--out", str(tmp_path / "ray"), "--engine",
                 str(tiny_engine), "--steps", "2", "--strength", "0.5", "--seed", "1", "--ray"])
    assert code == 0
    assert "0 file(s) written, 10 already done by an earlier run" in capsys.readouterr().out
    assert not partial_files(tmp_path / "ray")


def after_planning(monkeypatch, step) -> None:
    """Run ``step(tasks)`` once the driver has planned the run (scanside.cluster.plan), before
    any worker starts: something that happens mid-run, at a known point."""
    from scanside import cluster

    real_plan = cluster.plan

    def plan_then_step(paths, fingerprint):
        tasks, failures = real_plan(paths, fingerprint)
        step(tasks)
        return tasks, failures

    monkeypatch.setattr(cluster, "plan", plan_then_step)


@pytest.mark.slow
def test_a_partial_file_a_lost_worker_leaves_is_removed_by_the_same_run(local_ray, tiny_engine,
                                                                         tmp_path, monkeypatch):
    # A worker node killed while writing leaves its temporary file; Ray retries the slice
    # elsewhere under another temporary name, so the lost one stays unless the run, still
    # holding the folder's lock, clears it at the end. (The two-node test, which kills a real
    # worker node, left one in 1 run of several.) Here it appears after the start-of-run
    # clean-up, as it would mid-run.
    from scanside import cluster

    ct_series(tmp_path / "in" / "a", 3)

    def lose_a_write(tasks):
        lost = tmp_path / "ray" / Path(tasks[0]["target"]).parent / ".IM00001.dcm.x1y2z3.partial"
        lost.parent.mkdir(parents=True, exist_ok=True)
        lost.write_bytes(b"half a DICOM file")

    after_planning(monkeypatch, lose_a_write)
    report = cluster.enhance_archive([tmp_path / "in"], tmp_path / "ray", engine=tiny_engine,
                                     workers=1, **SETTINGS)
    assert report.ok and len(report.written) == 3
    assert not partial_files(tmp_path / "ray")


@pytest.mark.slow
def test_a_cluster_writes_to_s3_what_one_machine_writes(local_ray, s3_endpoint, tiny_engine,
                                                         tmp_path):
    from scanside.cluster import enhance_archive
    from scanside.store import Store

    ct_series(tmp_path / "in" / "a", 5)
    single = enhance_series([tmp_path / "in"], Pipeline.load(tiny_engine), tmp_path / "single",
                            progress=False, **SETTINGS)
    assert single.ok and len(single.written) == 5
    uri = bucket_uri(s3_endpoint)
    report = enhance_archive([tmp_path / "in"], uri, engine=tiny_engine, workers=2, **SETTINGS)
    assert report.ok and len(report.written) == 5
    assert all(name.startswith("s3://***@") for name in report.written)  # no secret in reports
    store = Store(uri)
    for path in (tmp_path / "single").rglob("*.dcm"):
        with store.open_input(path.relative_to(tmp_path / "single").as_posix()) as f:
            assert pydicom.dcmread(f).PixelData == pydicom.dcmread(path).PixelData
    # A rerun reads each object's UID back and writes nothing; a foreign object is refused.
    first = sorted(p.relative_to(tmp_path / "single").as_posix()
                   for p in (tmp_path / "single").rglob("*.dcm"))[0]
    store.write(first, b"not ours")
    again = enhance_archive([tmp_path / "in"], uri, engine=tiny_engine, workers=2, **SETTINGS)
    assert not again.written and len(again.skipped) == 4
    [(_, reason)] = again.failures
    assert reason.startswith(f"{store.name(first)}: already exists and holds another instance")


def test_a_uri_out_without_ray_is_refused(tmp_path, capsys):
    ct_series(tmp_path / "in", 1)
    code = main(["enhance", str(tmp_path / "in"), "--out", "s3://key:secret@bucket/out?region=x"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--out s3://***@bucket/out: a filesystem URI is written by the cluster path only" in err
    assert "secret" not in err


def test_ray_is_imported_only_by_the_cluster_path():
    code = ("import sys, scanside, scanside.cli, scanside.dicom, scanside.node, "
            "scanside.runtime; sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.slow
def test_the_local_clusters_token_goes_to_the_sessions_home(local_ray, ray_home):
    if not ray_has_token_auth():
        pytest.skip("this Ray has no token authentication, so writes no token")
    assert (ray_home / ".ray" / "auth_token").is_file()  # Ray's, for its local cluster


@pytest.mark.slow
def test_relative_paths_reach_the_workers_absolute(local_ray, tiny_engine, tmp_path,
                                                   monkeypatch, capsys):
    # The actors' working folder is not the driver's (on another node it cannot be): input,
    # output and engine given relative to the driver's must still be found and written there.
    monkeypatch.chdir(tmp_path)
    ct_series(Path("in") / "a", 3)
    engine = os.path.relpath(tiny_engine, tmp_path)
    code = main(["enhance", "in", "--out", "out", "--engine", engine, "--steps", "2",
                 "--strength", "0.5", "--seed", "1", "--ray"])
    assert code == 0, capsys.readouterr()
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 3


@pytest.mark.slow
def test_a_file_a_node_cannot_see_is_reported_not_found_on_that_node(local_ray, tiny_engine,
                                                                      tmp_path, monkeypatch):
    from scanside import cluster

    ct_series(tmp_path / "in" / "a", 2)
    # What a node without the shared folder sees: the file is gone once the driver planned.
    after_planning(monkeypatch, lambda tasks: Path(tasks[0]["path"]).unlink())
    report = cluster.enhance_archive([tmp_path / "in"], tmp_path / "ray", engine=tiny_engine,
                                     workers=1, **SETTINGS)
    [(path, reason)] = report.failures
    assert reason.startswith(f"{path}: not found on node ")
    assert "DICOM" not in reason and len(report.written) == 1


def with_token(home: Path) -> Path:
    """``home`` holding a Ray token, as any local Ray run leaves one in ~/.ray."""
    (home / ".ray").mkdir(parents=True, exist_ok=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    return home


def enhance_on(address: str, home: Path, out: Path, engine: Path, inputs: Path):
    """`scanside enhance INPUTS --ray ADDRESS` as a user runs it, with ``home`` as HOME:
    (the finished process, its seconds)."""
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "scanside", "enhance", str(inputs), "--out", str(out),
         "--engine", str(engine), "--steps", "2", "--strength", "0.5", "--seed", "1",
         "--ray", address, "--workers", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env=ray_env(home, PYTHONPATH=str(REPO)))
    return run, time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("auth", ["token", "open"])
def test_an_address_joins_a_plain_ray_start_cluster_or_says_why_not(auth, ray_home,
                                                                     tiny_engine, tmp_path):
    # `ray start --head` turns token authentication on where ~/.ray/auth_token exists (a
    # local Ray ran there before) and leaves it off elsewhere; a driver that joins by address
    # must match it, whatever token its own home holds.
    pytest.importorskip("ray")
    if not ray_has_token_auth():
        pytest.skip("this Ray has no token authentication")
    head_home = ray_home / f"head-{auth}"
    head_home.mkdir()
    if auth == "token":
        with_token(head_home)
    stale = with_token(ray_home / f"stale-{auth}")  # another cluster's token
    ct_series(tmp_path / "in", 2)
    port, temp = free_port(), ray_temp_dir()
    head = RayNode("--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                   "--num-cpus", "1", "--include-dashboard", "false", "--temp-dir", temp,
                   home=head_home)
    try:
        assert head.token_auth == (auth == "token"), "".join(head.lines)
        address = f"127.0.0.1:{port}"
        if auth == "open":  # a stale token here must not turn it on (its workers send none)
            run, _ = enhance_on(address, stale, tmp_path / "out", tiny_engine, tmp_path / "in")
            assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
            assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2
            return
        # The reported case: the head's own machine, where a local Ray left the token.
        run, _ = enhance_on(address, head_home, tmp_path / "out", tiny_engine, tmp_path / "in")
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2
        # Another cluster's token, and none: exit 2 at once, the cause and the fix, no trace.
        bare = ray_home / "bare"
        bare.mkdir(exist_ok=True)
        for home, cause in ((stale, f"refused the token this machine has ({stale}/.ray/"
                                    "auth_token)"),
                            (bare, "requires token authentication and this machine has no "
                                   "token")):
            run, seconds = enhance_on(address, home, tmp_path / "x", tiny_engine,
                                      tmp_path / "in")
            assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-3000:]
            assert seconds < 15  # Ray alone retries for 20 s, then a bare ConnectionError
            assert f"--ray {address}: the Ray cluster {cause}" in run.stderr
            assert "ray get-auth-token" in run.stderr and "RAY_AUTH_TOKEN" in run.stderr
            assert "Traceback" not in run.stderr
            assert not (tmp_path / "x").exists() or not list((tmp_path / "x").rglob("*.dcm"))
    finally:
        head.stop()
        shutil.rmtree(temp, ignore_errors=True)

