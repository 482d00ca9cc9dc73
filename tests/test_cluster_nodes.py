"""The full cluster test (CI runs it as its own command; docs/cluster.md): a head node and a
second worker node process on this machine, loopback only, started with plain `ray start` and
Ray's default authentication (a token in ~/.ray/auth_token, as any local Ray run leaves one,
turns it on; the session's own HOME, never the user's); a few hundred slices in several
series; the worker node is killed mid-run and the output is still complete and identical to
one machine's. Set SCANSIDE_CLUSTER_TESTS=1 to run it (about two minutes)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pydicom
import pytest

from scanside import Pipeline
from scanside.bench.orthanc import free_port
from scanside.dicom import enhance_series
from tests.conftest import RayNode, ray_env, ray_has_token_auth, ray_temp_dir
from tests.dicom.conftest import partial_files
from tests.node.conftest import REPO, ct_series

pytestmark = [pytest.mark.skipif(not os.environ.get("SCANSIDE_CLUSTER_TESTS"),
                                 reason="the two-node Ray test runs with SCANSIDE_CLUSTER_TESTS=1"),
              pytest.mark.slow]


def test_a_worker_node_killed_mid_run(ray_home, tiny_engine, tmp_path):
    pytest.importorskip("ray")
    token = ray_home / ".ray" / "auth_token"
    if not token.is_file():  # a local cluster earlier in the session wrote one, or not
        token.parent.mkdir(exist_ok=True)
        token.write_text(secrets.token_hex(32))
    port, worker_port, temp = free_port(), free_port(), ray_temp_dir()
    nodes = [RayNode("--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                     "--num-cpus", "1", "--include-dashboard", "false", "--temp-dir", temp,
                     home=ray_home)]
    try:
        # Ray's default where a token is there (Ray 2.5x):
        assert nodes[0].token_auth == ray_has_token_auth(), "".join(nodes[0].lines)
        # A worker node reads the token only in token mode (Ray's docs: set it on every
        # node that joins); the driver below is given no mode: it must find its own.
        nodes.append(RayNode("--address", f"127.0.0.1:{port}", "--node-ip-address",
                             "127.0.0.1", "--num-cpus", "1", "--node-manager-port",
                             str(worker_port), "--temp-dir", temp, home=ray_home,
                             RAY_AUTH_MODE="token"))
        for n, count in enumerate((120, 100, 80)):
            ct_series(tmp_path / "in" / f"series{n}", count)
        run = subprocess.Popen(
            [sys.executable, "-m", "scanside", "enhance", str(tmp_path / "in"), "--out",
             str(tmp_path / "ray"), "--engine", str(tiny_engine), "--steps", "4", "--strength",
             "0.5", "--seed", "1", "--ray", f"127.0.0.1:{port}", "--workers", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
            env=ray_env(ray_home, PYTHONPATH=str(REPO)))
        deadline = time.monotonic() + 300
        while len(list((tmp_path / "ray").rglob("*.dcm"))) < 60 and time.monotonic() < deadline:
            time.sleep(0.2)
        raylet = subprocess.run(["pgrep", "-f", f"node_manager_port={worker_port}"],
                                capture_output=True, text=True).stdout.split()
        assert raylet, "the worker node's raylet was not found"
        for pid in raylet:
            os.kill(int(pid), signal.SIGKILL)
        output, _ = run.communicate(timeout=900)
        assert run.returncode == 0, output[-2000:]
    finally:
        for node in reversed(nodes):  # never `ray stop`: it stops every Ray on the machine
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)
    single = enhance_series([tmp_path / "in"], Pipeline.load(tiny_engine), tmp_path / "single",
                            progress=False, steps=4, strength=0.5, seed=1)
    assert len(single.written) == 300
    ours = {p.relative_to(tmp_path / "ray"): pydicom.dcmread(p).PixelData
            for p in (tmp_path / "ray").rglob("*.dcm")}
    theirs = {p.relative_to(tmp_path / "single"): pydicom.dcmread(p).PixelData
              for p in (tmp_path / "single").rglob("*.dcm")}
    assert ours == theirs  # complete, no duplicate, byte-identical pixels, 3 series
    assert not partial_files(tmp_path / "ray")
