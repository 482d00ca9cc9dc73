"""The node with independent peers on loopback: dcmtk's storescu sends, the node enhances,
a recording Storage SCP (counts every C-STORE, so a duplicate would show) and dcmtk's storescp
receive."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.dicom.conftest import ct_phantom, ct_slice, pydicom_file

REPO = Path(__file__).resolve().parents[2]
STORESCU, STORESCP = Path("/usr/bin/storescu"), Path("/usr/bin/storescp")  # dcmtk's, not a shim


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        wait_for(lambda: echo(port), 60, "the node to answer C-ECHO")
        return proc, port

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


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


def storescu(port: int, files: list[Path], aet: str = "MODALITY") -> subprocess.CompletedProcess:
    if not STORESCU.exists():
        pytest.skip("dcmtk's storescu is not installed (apt-get install dcmtk)")
    return subprocess.run([str(STORESCU), "-aet", aet, "-aec", "SCANSIDE", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def status(spool: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "scanside", "status", "--spool", str(spool),
                          "--json"], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(out.stdout)


def ct_series(folder: Path, count: int) -> list[Path]:
    uid = generate_uid()
    return [ct_slice(folder / f"s{n:03d}.dcm", ct_phantom(64, seed=n), float(n), n + 1, uid)
            for n in range(count)]


def test_receive_enhance_forward_to_two_destinations(node_factory, recorder, tmp_path):
    if not STORESCP.exists():
        pytest.skip("dcmtk's storescp is not installed (apt-get install dcmtk)")
    scp_port, scp_dir = free_port(), tmp_path / "storescp"
    scp_dir.mkdir()
    scp = subprocess.Popen([str(STORESCP), "-aet", "STORESCP", "-od", str(scp_dir), "+xa",
                            str(scp_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        spool = tmp_path / "spool"
        node, port = node_factory(spool, [f"RECORDER@127.0.0.1:{recorder.port}",
                                          f"STORESCP@127.0.0.1:{scp_port}"])
        sources = ct_series(tmp_path / "in", 10) + [tmp_path / "in2" / "CT_small.dcm"]
        sources[-1].parent.mkdir()
        shutil.copy(pydicom_file("CT_small.dcm"), sources[-1])
        sent = storescu(port, sources)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(recorder.received) == 11, 120, "11 derived instances at the recorder")
        wait_for(lambda: len(list(scp_dir.iterdir())) == 11, 60, "11 instances at storescp")
    finally:
        scp.terminate()
        scp.wait()
    assert set(recorder.received.values()) == {1}  # each derived instance sent once
    sources_by_uid = {str(pydicom.dcmread(p).SOPInstanceUID) for p in sources}
    series = set()
    for ds in recorder.datasets.values():
        assert "DERIVED" in ds.ImageType
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in sources_by_uid
        series.add(ds.SeriesInstanceUID)
    assert len(series) == 2  # one derived series per source series
    state = status(spool)
    assert state["instances"] == {"enhanced": 11}
    assert all(states == {"sent": 11} for states in state["sends"].values())
    assert oct(spool.stat().st_mode & 0o777) == "0o700"


def test_refused_instances_and_senders(node_factory, recorder, tmp_path):
    spool = tmp_path / "spool"
    node, port = node_factory(spool, [f"RECORDER@127.0.0.1:{recorder.port}"],
                              "--allow", "MODALITY@127.0.0.1")
    rejected = storescu(port, [pydicom_file("CT_small.dcm")], aet="INTRUDER")
    assert rejected.returncode != 0
    good = ct_series(tmp_path / "in", 3)
    truncated = tmp_path / "bad" / "truncated.dcm"  # pixel data cut short
    truncated.parent.mkdir()
    truncated.write_bytes(good[0].read_bytes()[:-3000])
    truncated_ds = pydicom.dcmread(truncated, stop_before_pixels=True)
    no_pixels = tmp_path / "bad" / "no_pixels.dcm"  # a CT header without an image
    header = pydicom.dcmread(good[1], stop_before_pixels=True)
    header.SOPInstanceUID = generate_uid()
    del header.Rows
    header.save_as(no_pixels)
    assert truncated_ds.SOPInstanceUID  # sent raw: the node sees what a damaged sender sends
    statuses = send_raw(port, [truncated, no_pixels, good[2]])
    assert statuses == [0xC000, 0xC000, 0x0000]
    assert storescu(port, good[:2]).returncode == 0
    wait_for(lambda: len(recorder.received) == 3, 120, "the good series at the recorder")
    state = status(spool)
    assert state["instances"] == {"enhanced": 3}
    refusals = [e["message"] for e in state["last_errors"] if e["kind"] == "refused"]
    assert len(refusals) == 2 and any("declares" in m for m in refusals)
    assert not [p for p in spool.rglob("*") if p.name.endswith(".partial")]


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


def test_a_killed_node_resumes_from_its_journal(node_factory, recorder, tmp_path):
    """SIGKILL after every slice was acknowledged and before the series was complete: on
    restart the node enhances and sends it; each derived instance reaches the PACS once."""
    spool = tmp_path / "spool"
    node, port = node_factory(spool, [f"RECORDER@127.0.0.1:{recorder.port}"],
                              "--series-idle", "30")
    sources = ct_series(tmp_path / "in", 8)
    assert storescu(port, sources).returncode == 0
    assert status(spool)["instances"] == {"received": 8}
    node.send_signal(signal.SIGKILL)
    node.wait()
    node_factory(spool, [f"RECORDER@127.0.0.1:{recorder.port}"], port=port)
    wait_for(lambda: len(recorder.received) == 8, 120, "8 derived instances after the restart")
    assert set(recorder.received.values()) == {1}
    assert status(spool)["sends"] == {f"RECORDER@127.0.0.1:{recorder.port}": {"sent": 8}}
