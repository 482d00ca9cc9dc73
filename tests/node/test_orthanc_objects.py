"""The objects scanside writes beside an enhanced or segmented series (a Parametric Map, a
SEG, a TID 1500 SR) are accepted by a real PACS: Orthanc stores each over C-STORE, lists it
under its own SOP Class, and files it in the study and patient of its source images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from scanside.dicom.pmap import parametric_map
from scanside.dicom.seg import Label, segmentation
from scanside.dicom.segment import RESEARCH_AID
from scanside.dicom.sr import Finding, measurement_report
from tests.dicom.conftest import ct_phantom, ct_slice

from .conftest import wait_for

SIZE = 64
CT, PM = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.30"
SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.33"
LESION = Label(1, "lesion candidate", ("SCT", "49755003", "Morphologically abnormal structure"),
               ("SCT", "52988006", "Lesion"))


def uids() -> dict:
    return {"series_uid": generate_uid(), "instance_uid": generate_uid()}


def derived_objects(folder: Path) -> tuple[list[Path], dict[str, tuple[str, Path]]]:
    """Three CT slices and, written from them, a Parametric Map, a SEG and an SR:
    (the slices' paths, {SOP Instance UID: (SOP Class UID, path)} of the derived objects)."""
    series = generate_uid()
    paths = [ct_slice(folder / "ct" / f"s{n}.dcm", ct_phantom(SIZE, seed=n), float(n), n + 1,
                      series, "1.2.3.4.77") for n in range(3)]
    sources = [pydicom.dcmread(p) for p in paths]
    change = np.random.default_rng(0).normal(0.0, 10.0, (3, SIZE, SIZE)).astype(np.float32)
    pm = parametric_map(sources, change, kind="change", series_number=1407,
                        description="scanside: change map (HU)", model_name="test model",
                        **uids())
    masks = np.zeros((3, SIZE, SIZE, 1), bool)
    masks[1, 20:30, 20:30, 0] = True
    seg = segmentation(sources, masks, [LESION], series_number=1607,
                       description="scanside: lesion candidate", model_name="test model",
                       algorithm_version="1.0", **uids())
    finding = Finding(1, 1, (24.5, 24.5), 5.6, 49.0, 7.9, 40.0, 5.0)
    sr = measurement_report(sources, [finding], segmentation=seg, series_number=1707,
                            model_name="test model", algorithm_version="1.0",
                            statement=RESEARCH_AID, **uids())
    written = {}
    for name, ds in (("pm", pm), ("seg", seg), ("sr", sr)):
        path = folder / f"{name}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        written[str(ds.SOPInstanceUID)] = (str(ds.SOPClassUID), path)
    return paths, written


def c_store(port: int, paths: list[Path]) -> list[int]:
    """pynetdicom's C-STORE of each file, proposing its own SOP Class and transfer syntax."""
    from pynetdicom import AE

    ae = AE(ae_title="SCANSIDE")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    for ds in headers:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in paths]
    finally:
        assoc.release()


@pytest.mark.slow
def test_orthanc_stores_the_parametric_map_seg_and_sr(orthanc, tmp_path):
    sources, derived = derived_objects(tmp_path)
    assert {cls for cls, _ in derived.values()} == {PM, SEG, SR}
    statuses = c_store(orthanc.dicom_port, [*sources, *(p for _, p in derived.values())])
    assert statuses == [0] * (len(sources) + len(derived))

    wait_for(lambda: len(orthanc.instances()) >= len(sources) + len(derived), 30,
             "Orthanc to list every instance")
    listed = {}
    for instance in orthanc.instances():
        tags = orthanc.get(f"/instances/{instance}/simplified-tags")
        listed[tags["SOPInstanceUID"]] = tags
    assert len(listed) == len(sources) + len(derived)
    for uid, (sop_class, _) in derived.items():
        assert uid in listed, f"{sop_class} not stored"
        assert listed[uid]["SOPClassUID"] == sop_class
    source_uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in sources}
    assert {listed[u]["SOPClassUID"] for u in source_uids} == {CT}
    # One patient, one study: the derived objects are filed with the images they came from,
    # each in a series of its own.
    assert len(orthanc.get("/patients")) == 1
    assert len(orthanc.get("/studies")) == 1
    assert len(orthanc.get("/series")) == 1 + len(derived)
    assert {listed[u]["StudyInstanceUID"] for u in listed} == {"1.2.3.4.77"}
