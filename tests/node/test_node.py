"""The node with independent peers on loopback: dcmtk's storescu sends, the node enhances,
a recording Storage SCP and dcmtk's storescp receive."""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.dicom.conftest import partial_files, pydicom_file

from .conftest import (
    STORESCP, ct_series, free_port, require, send_raw, status, storescu, wait_for,
)


# pydicom's real files and the storescu options that propose their own encodings.
REAL_FILES = {"CT_small.dcm": (), "MR_small.dcm": (), "MR_small_RLE.dcm": ("-xr",),
              "693_J2KI.dcm": ("-xw",)}


@pytest.mark.slow
def test_a_100_slice_series_and_real_files_reach_three_destinations(node_factory, recorder,
                                                                     orthanc, tmp_path):
    """dcmtk's storescu sends a 100-slice CT series and pydicom's real CT and MR files; the
    node forwards the derived instances to Orthanc, dcmtk's storescp and a recording SCP;
    each arrives once and passes dciodvfy with no error its source did not have."""
    from tests.dicom.test_series import dciodvfy_errors, require_tools

    require_tools()
    require(STORESCP, "dcmtk")
    scp_port, scp_dir = free_port(), tmp_path / "storescp"
    scp_dir.mkdir()
    scp = subprocess.Popen([str(STORESCP), "-aet", "STORESCP", "-od", str(scp_dir), "+xa",
                            str(scp_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sources = ct_series(tmp_path / "in", 100)
    (tmp_path / "real").mkdir()
    sources += [Path(shutil.copy(pydicom_file(name), tmp_path / "real" / name))
                for name in REAL_FILES]
    # MR_small and MR_small_RLE are one instance in two encodings (the same SOP Instance UID):
    # the node, as a PACS does, keeps one.
    by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in sources}
    total = len(by_uid)
    try:
        spool = tmp_path / "spool"
        node, port = node_factory(spool, [f"RECORDER@127.0.0.1:{recorder.port}",
                                          f"STORESCP@127.0.0.1:{scp_port}", orthanc.destination])
        for name, options in [(None, ()), *REAL_FILES.items()]:
            files = sources[:100] if name is None else [tmp_path / "real" / name]
            sent = storescu(port, files, "MODALITY", *options)
            assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(recorder.received) == total, 240, f"{total} at the recorder")
        wait_for(lambda: len(list(scp_dir.iterdir())) == total, 60, f"{total} at storescp")
        wait_for(lambda: orthanc.count() == total, 60, f"{total} in Orthanc")
    finally:
        scp.terminate()
        scp.wait()
    assert set(recorder.received.values()) == {1}  # each derived instance sent once
    series = set()
    for ds in recorder.datasets.values():
        assert "DERIVED" in ds.ImageType
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in by_uid
        series.add(ds.SeriesInstanceUID)
    assert len(series) == 4  # one derived series per source series (the MR twice is one)
    checked = sorted(scp_dir.iterdir())
    for path in checked[:: max(1, len(checked) // 20)] + [p for p in checked if "MR" in p.name]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        source = by_uid[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert not dciodvfy_errors(path) - dciodvfy_errors(source), source.name
    state = status(spool)
    assert state["instances"] == {"enhanced": total}
    assert all(states == {"sent": total} for states in state["sends"].values())
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
    assert not partial_files(spool)


@pytest.mark.slow
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


def test_tls_and_forwarding_the_originals(node_factory, recorder, tmp_path):
    """A node with --tls-cert takes TLS associations only; --forward-originals passes the
    sources on beside their derived instances."""
    import ssl

    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    spool = tmp_path / "spool"
    node, port = node_factory(spool, [f"RECORDER@127.0.0.1:{recorder.port}"], "--tls-cert",
                              str(cert), "--tls-key", str(key), "--forward-originals")
    sources = ct_series(tmp_path / "in", 2)
    assert storescu(port, sources).returncode != 0  # plain DICOM is not accepted
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANSIDE", tls_args=(client, "localhost"))
    assert assoc.is_established
    try:
        assert [int(assoc.send_c_store(p).Status) for p in sources] == [0, 0]
    finally:
        assoc.release()
    wait_for(lambda: len(recorder.received) == 4, 120, "2 derived + 2 original instances")
    originals = {str(pydicom.dcmread(p).SOPInstanceUID) for p in sources}
    assert originals <= set(recorder.received)
    derived = set(recorder.received) - originals
    assert all("DERIVED" in recorder.datasets[uid].ImageType for uid in derived)


def test_late_slices_out_of_order_join_the_same_derived_series(node_factory, recorder, tmp_path):
    """The second half of a series arrives first and is enhanced and sent; the first half
    follows: every slice ends in the one derived series, nothing refused as 'exists'."""
    spool = tmp_path / "spool"
    node, port = node_factory(spool, [f"RECORDER@127.0.0.1:{recorder.port}"])
    sources = ct_series(tmp_path / "in", 6)
    assert storescu(port, sources[3:]).returncode == 0
    wait_for(lambda: len(recorder.received) == 3, 120, "the late half sent")
    assert storescu(port, sources[:3]).returncode == 0
    wait_for(lambda: len(recorder.received) == 6, 120, "the whole series sent")
    assert set(recorder.received.values()) == {1}
    assert len({ds.SeriesInstanceUID for ds in recorder.datasets.values()}) == 1
    state = status(spool)
    assert state["instances"] == {"enhanced": 6} and not state["last_errors"]


@pytest.mark.slow
def test_maps_segmentation_and_annotation_are_forwarded(node_factory, recorder, seg_engine,
                                                        tmp_path):
    """--maps and --annotate with a segmentation engine: for a 3-slice series the PACS gets
    the enhanced slices, each one's five map objects, and the series' SEG and SR."""
    from pydicom.uid import (ComprehensiveSRStorage, CTImageStorage, ParametricMapStorage,
                             SegmentationStorage)

    spool = tmp_path / "spool"
    node, port = node_factory(spool, [f"RECORDER@127.0.0.1:{recorder.port}"],
                              "--maps", "uncertainty,change", "--segment-engine",
                              str(seg_engine), "--annotate")
    sources = ct_series(tmp_path / "in", 3)
    assert storescu(port, sources).returncode == 0
    wait_for(lambda: len(recorder.received) >= 3 * 6 + 2, 180, "maps, SEG and SR sent")
    classes = collections.Counter(str(ds.SOPClassUID) for ds in recorder.datasets.values())
    assert classes[ParametricMapStorage] == 6 and classes[CTImageStorage] == 9
    assert classes[SegmentationStorage] == 4  # three change masks and the series' candidates
    assert classes[ComprehensiveSRStorage] + classes["1.2.840.10008.5.1.4.1.1.88.34"] == 1
    assert set(recorder.received.values()) == {1}
    state = status(spool)
    assert state["instances"] == {"enhanced": 3} and not state["last_errors"]
