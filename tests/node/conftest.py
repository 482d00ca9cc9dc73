"""The node's peers on loopback: dcmtk's storescu and storescp, a recording Storage SCP that
counts every C-STORE (so a duplicate would show), Orthanc, and the node as a process."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from scanside.bench.orthanc import free_port
from tests import system_tools
from tests.dicom.conftest import ct_phantom, ct_slice

REPO = Path(__file__).resolve().parents[2]
STORESCU, STORESCP = Path("/usr/bin/storescu"), Path("/usr/bin/storescp")  # dcmtk's, not a shim


def require(tool: Path, package: str) -> None:
    """Skip where Debian's ``package`` (which holds ``tool``) is missing; fail instead in CI
    (tests.system_tools)."""
    system_tools.require(package)


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Recorder:
    """A Storage SCP that keeps every instance it is sent and counts each SOP Instance UID."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.presentation import AllStoragePresentationContexts

        self.received: collections.Counter = collections.Counter()
        self.datasets: dict[str, pydicom.Dataset] = {}
        self.lock = threading.Lock()
        ae = AE(ae_title="RECORDER")
        ae.supported_contexts = AllStoragePresentationContexts
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.store)])

    def store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.received[str(ds.SOPInstanceUID)] += 1
            self.datasets[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def recorder():
    rec = Recorder()
    yield rec
    rec.stop()


@pytest.fixture
def node_factory(tiny_engine, tmp_path):
    started: list[subprocess.Popen] = []

    def start(spool: Path, forward: list[str], *extra: str, port: int = 0) -> tuple:
        port = port or free_port()
        args = [sys.executable, "-m", "scanside", "serve", "--spool", str(spool), "--port",
                str(port), "--host", "127.0.0.1", "--engine", str(tiny_engine), "--steps", "2",
                "--strength", "0.5", "--series-idle", "1", *extra]
        for destination in forward:
            args += ["--forward", destination]
        log = open(spool.parent / f"node-{len(started)}.log", "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        started.append(proc)
        ready = listening if "--tls-cert" in extra else echo  # C-ECHO needs the plain port
        wait_for(lambda: ready(port), 60, "the node to answer")
        return proc, port

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def echo(port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="MODALITY")  # the sender the tests allow
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANSIDE")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def storescu(port: int, files: list[Path], aet: str = "MODALITY",
             *options: str) -> subprocess.CompletedProcess:
    """dcmtk's storescu; it proposes uncompressed syntaxes unless ``options`` say otherwise
    (-xr RLE, -xw JPEG 2000, as a modality configured for them would)."""
    require(STORESCU, "dcmtk")
    return subprocess.run([str(STORESCU), *options, "-aet", aet, "-aec", "SCANSIDE", "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True,
                          timeout=120)


def status(spool: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "scanside", "status", "--spool", str(spool),
                          "--json"], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(out.stdout)


def ct_series(folder: Path, count: int, size: int = 64) -> list[Path]:
    uid = generate_uid()
    return [ct_slice(folder / f"s{n:03d}.dcm", ct_phantom(size, seed=n), float(n), n + 1, uid)
            for n in range(count)]


def send_raw(port: int, files: list[Path]) -> list[int]:
    """C-STORE each file's bytes as they are (pynetdicom sends a path without decoding it)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANSIDE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in files]
    finally:
        assoc.release()




@pytest.fixture
def orthanc(tmp_path):
    from scanside.bench.orthanc import ORTHANC, Orthanc

    require(ORTHANC, "orthanc")
    pacs = Orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()
