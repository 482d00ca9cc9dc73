"""Every output byte stays as it was: the demo's derived DICOM and a 20-slice CT series through
`scanside enhance`, against a record made before the house was rearranged (issue 37).

The inputs are built here with fixed UIDs and seeded pixels. Every attribute of every written
file is compared but the creation times (InstanceCreationDate/Time, the equipment item's
ContributionDateTime); the pixel data is compared byte for byte on the host class the record
was made on. ONNX Runtime's float kernels differ between instruction sets (AVX2, AVX-512), so
on another host class the pixels may differ by rounding: there they must agree to one stored
unit, and the attributes (derived UIDs included) still exactly.

The derived UIDs and descriptions of more settings than the two runs use are kept in a table
(identities.json, made from this code after its values were checked equal to scanside
0.1.0's, commit 258a66f, setting by setting).

Re-record only on purpose, when an output is meant to change (and say so in CHANGELOG.md):
    python -m tests.dicom.test_unchanged record
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pydicom

from scanside import Sampling

RECORD = Path(__file__).parent / "data" / "unchanged.json"
IDENTITIES = Path(__file__).parent / "data" / "identities.json"
# Settings whose derived UIDs and DerivationDescription must stay as they were: the keyword
# form of scanside 0.1.0 (values as a caller or the CLI gave them).
SETTINGS = {"none": {}, "seed 0": {"seed": 0}, "seed 3": {"seed": 3},
            "steps, strength": {"steps": 8, "strength": 0.2}, "ensemble 4": {"ensemble": 4},
            "consistency 8": {"consistency_px": 8}, "consistency 8.0": {"consistency_px": 8.0},
            "consistency band": {"consistency_px": [2.0, 32.0]},
            "noise factor 1": {"noise_factor": 1.0}, "guidance 1": {"guidance": 1},
            "guidance 1.0": {"guidance": 1.0}, "euler": {"scheduler": "euler"},
            "prompts": {"prompt": "a CT", "negative_prompt": "noise"},
            "cli defaults": {"seed": 0, "prompt": None, "strength": None}}
PIXELS = Path(__file__).parent / "data" / "unchanged.npz"
CREATION_TIMES = {"InstanceCreationDate", "InstanceCreationTime", "ContributionDateTime"}
SLICES = 20


def fixed_uid(*parts: object) -> str:
    return "1.2.826.0.1.3680043.10.1338." + ".".join(str(p) for p in parts)


def demo_inputs(folder: Path) -> list[Path]:
    """The demo's two inputs (its simulated low-dose slice and pydicom's CT_small.dcm) with
    the simulated one's random UIDs replaced by fixed ones."""
    from scanside.demo import load_pair
    from scanside.dicom.synthetic import simulated_ct
    from scanside.dicom.write import save

    folder.mkdir(parents=True)
    pair = load_pair()
    ds = simulated_ct(pair["low"].astype(np.float32), "scanside demo: simulated low-dose CT", 0.8)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = fixed_uid(1, 1)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = fixed_uid(1), fixed_uid(1, 2)
    ds.FrameOfReferenceUID = fixed_uid(1, 3)
    simulated = folder / "simulated_low_dose_ct.dcm"
    save(ds, simulated)
    ct_small = folder / "CT_small.dcm"
    ct_small.write_bytes((Path(pydicom.__file__).parent / "data" / "test_files"
                          / "CT_small.dcm").read_bytes())
    return [simulated, ct_small]


def series_input(folder: Path) -> Path:
    """SLICES 64 x 64 CT slices of one series: a disc of soft tissue with seeded noise."""
    from scanside.dicom.synthetic import simulated_ct
    from scanside.dicom.write import save

    folder.mkdir(parents=True)
    rng = np.random.default_rng(37)
    yy, xx = np.mgrid[:64, :64]
    body = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 26 ** 2, 40.0, -1000.0)
    for i in range(SLICES):
        hu = body + 30.0 * rng.standard_normal(body.shape)
        ds = simulated_ct(hu.astype(np.float32), "scanside test series", 0.7)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = fixed_uid(2, 1, i + 1)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = fixed_uid(2), fixed_uid(2, 2)
        ds.FrameOfReferenceUID = fixed_uid(2, 3)
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        save(ds, folder / f"slice{i + 1:02d}.dcm")
    return folder


def outputs(work: Path) -> dict[str, Path]:
    """Run both paths into ``work``; name -> written DICOM file."""
    from scanside import Pipeline
    from scanside.cli import main
    from scanside.demo import enhance_file

    pipe = Pipeline.load()
    demo_out = work / "demo"
    written = [enhance_file(pipe, source, demo_out)
               for source in demo_inputs(work / "demo-input")]
    assert main(["enhance", str(series_input(work / "series-input")), "--out", str(work / "series"),
                 "--workers", "1"]) == 0
    written += sorted((work / "series").rglob("*.dcm"))
    assert len(written) == 2 + SLICES
    return {f"{i:02d}-{p.name}": p for i, p in enumerate(written)}


def attributes(ds: pydicom.Dataset) -> object:
    """Every element but the creation times and the pixel data, as JSON-able values."""
    out = {}
    for elem in ds:
        if elem.keyword in CREATION_TIMES or elem.keyword == "PixelData":
            continue
        if elem.VR == "SQ":
            out[elem.keyword or str(elem.tag)] = [attributes(item) for item in elem.value]
        elif isinstance(elem.value, bytes):
            out[elem.keyword or str(elem.tag)] = hashlib.sha256(elem.value).hexdigest()
        else:
            out[elem.keyword or str(elem.tag)] = str(elem.value)
    return out


def read(path: Path) -> tuple[dict, np.ndarray]:
    ds = pydicom.dcmread(path)
    return ({"meta": attributes(ds.file_meta), "dataset": attributes(ds)},
            np.frombuffer(ds.PixelData, np.uint8))


def identities() -> dict[str, dict[str, str]]:
    """The built-in model's fingerprint (what derived UIDs come from, with the window) and
    description for each of SETTINGS."""
    from scanside import Pipeline
    from scanside.dicom import Window
    from scanside.dicom.series import run_fingerprint

    pipe = Pipeline.load()
    window = Window.parse("40,400")
    out = {}
    for name, settings in SETTINGS.items():
        sampling = Sampling.of(**settings)
        out[name] = {"fingerprint": run_fingerprint(pipe, None, sampling),
                     "with window": run_fingerprint(pipe, window, sampling),
                     "describe": pipe.describe(sampling)}
    return out


def test_fingerprints_and_descriptions_are_unchanged():
    assert identities() == json.loads(IDENTITIES.read_text())


def record() -> None:
    import tempfile

    from scanside.runtime.host import host_class

    with tempfile.TemporaryDirectory() as tmp:
        files = outputs(Path(tmp))
        read_back = {name: read(path) for name, path in files.items()}
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps({
        "host_class": host_class(),
        "files": {name: {**attrs, "pixel_sha256": hashlib.sha256(pixels).hexdigest()}
                  for name, (attrs, pixels) in read_back.items()},
    }, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(PIXELS, **{name: pixels for name, (_, pixels) in read_back.items()})
    IDENTITIES.write_text(json.dumps(identities(), indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(read_back)} files on {host_class()} -> {RECORD}")


def test_outputs_are_unchanged(tmp_path):
    from scanside.runtime.host import host_class

    expected = json.loads(RECORD.read_text())
    files = outputs(tmp_path)
    assert sorted(files) == sorted(expected["files"])
    with np.load(PIXELS) as recorded:
        for name, path in files.items():
            attrs, pixels = read(path)
            want = expected["files"][name]
            assert attrs["meta"] == want["meta"], name
            assert attrs["dataset"] == want["dataset"], name
            if host_class() == expected["host_class"]:
                assert hashlib.sha256(pixels).hexdigest() == want["pixel_sha256"], name
            else:  # other kernels: rounding may move a stored value by one
                ds = pydicom.dcmread(path)
                old = recorded[name].view(ds.pixel_array.dtype).reshape(ds.pixel_array.shape)
                diff = np.abs(ds.pixel_array.astype(np.int64) - old.astype(np.int64))
                assert diff.max() <= 1, (name, int(diff.max()))


if __name__ == "__main__":
    if sys.argv[1:] == ["record-identities"]:  # the table alone, checked against 0.1.0 by hand
        IDENTITIES.write_text(json.dumps(identities(), indent=1, sort_keys=True) + "\n")
    elif sys.argv[1:] == ["record"]:
        record()
    else:
        sys.exit(__doc__)
