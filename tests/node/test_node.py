"""The node with independent peers on loopback: dcmtk's storescu sends, the node enhances,
a recording Storage SCP and dcmtk's storescp receive."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pydicom
from pydicom.uid import generate_uid

from tests.dicom.conftest import pydicom_file

from .conftest import (
    STORESCP, ct_series, free_port, require, send_raw, status, storescu, wait_for,
)


def test_receive_enhance_forward_to_two_destinations(node_factory, recorder, tmp_path):
    require(STORESCP, "dcmtk")
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
