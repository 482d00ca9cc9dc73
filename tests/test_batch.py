"""The PNG/NPY batch: a bad file is reported and the batch goes on; inputs are never touched."""

from __future__ import annotations

import numpy as np
from PIL import Image

from scanside import Sampling
from scanside.batch import enhance_images


class Invert:
    def __init__(self):
        self.seen = []

    def enhance(self, image, sampling, progress=False):
        self.seen.append(sampling)
        return 1 - np.asarray(image, np.float32) / 255  # uint8 in, [0, 1] out, as the pipeline


def test_a_bad_file_does_not_stop_the_batch(tmp_path):
    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(good)
    bad = tmp_path / "in" / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    before = bad.read_bytes(), good.read_bytes()
    written = []
    model = Invert()
    report = enhance_images([bad, good], model, tmp_path / "out", Sampling(steps=3),
                            on_output=written.append)
    assert [p.name for p in report.written] == ["good_enhanced.png"] == [p.name for p in written]
    assert [p for p, _ in report.failures] == [bad] and str(bad) in report.failures[0][1]
    assert "internal error" not in report.failures[0][1]  # the input's fault, said so
    assert report.images == 1 and model.seen == [Sampling(steps=3)]
    assert np.asarray(Image.open(written[0]))[0, 0] == 55
    assert (bad.read_bytes(), good.read_bytes()) == before


def test_an_existing_output_is_refused_not_replaced(tmp_path):
    source = tmp_path / "a.npy"
    np.save(source, np.zeros((8, 8), np.float32))
    target = tmp_path / "out" / "a_enhanced.npy"
    target.parent.mkdir()
    target.write_bytes(b"keep me")
    report = enhance_images([source], Invert(), tmp_path / "out")
    assert report.written == [] and "already exists" in report.failures[0][1]
    assert target.read_bytes() == b"keep me"
