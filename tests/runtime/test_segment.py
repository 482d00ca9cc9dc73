"""Segmentation engines: the manifest names the task and coded labels, the runtime's loop
samples masks over seeds and views, and an engine is refused for the other task."""

from __future__ import annotations

import numpy as np
import pytest

from scanside import Pipeline, Sampling
from scanside.errors import InputError
from scanside.runtime import segment
from tests.conftest import as_segmenter

def test_the_manifest_names_the_task_labels_and_sampling(seg_engine):
    manifest = Pipeline.load(seg_engine).manifest
    assert manifest.task == "segment"
    assert manifest.labels[0]["type"] == {"scheme": "SCT", "value": "52988006",
                                          "meaning": "Lesion"}
    assert manifest.segment_defaults["seeds"] == 3 and manifest.segment_defaults["steps"] == 2


def test_segment_samples_seeds_times_views(seg_engine):
    pipe = Pipeline.load(seg_engine)
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    result = pipe.segment(image)
    assert result.samples == 3 and result.threshold == 0.5
    assert result.probability.shape == result.spread.shape == result.mask.shape == (64, 64)
    assert 0 <= result.probability.min() and result.probability.max() <= 1
    assert result.spread.max() > 0  # the seeds' samples differ
    np.testing.assert_array_equal(result.mask, result.probability > 0.5)
    more = pipe.segment(image, Sampling(ensemble=2), seeds=2, threshold=0.3)
    assert more.samples == 4 and more.threshold == 0.3
    again = pipe.segment(image)
    np.testing.assert_array_equal(again.probability, result.probability)  # seeded


def test_each_task_refuses_the_other_engine(seg_engine, concat_engine):
    image = np.zeros((64, 64), np.float32)
    with pytest.raises(InputError, match="segmentation engine .*task 'segment'.*scanside segment"):
        Pipeline.load(seg_engine).enhance(image)
    with pytest.raises(InputError, match="enhancement engine .*task 'enhance'"):
        Pipeline.load(concat_engine).segment(image)


def test_describe_and_fingerprint_follow_the_settings(seg_engine):
    pipe = Pipeline.load(seg_engine)
    assert "3 seed(s), mean > 0.5" in pipe.describe_segment()
    assert pipe.segment_fingerprint() != pipe.segment_fingerprint(seeds=4)
    assert pipe.segment_fingerprint() != pipe.segment_fingerprint(threshold=0.4)


@pytest.mark.parametrize("bad, message", [
    ([{"label": 1, "name": "lesion"}], "has no category code; add"),
    ([{"label": 1, "name": "lesion", "category": {"scheme": "SCT"}, "type": {}}], "is not a code"),
    ([{"label": 2, "name": "lesion"}], 'needs "label": 1'),
    ([], "names no labels"),
])
def test_labels_without_codes_are_refused_at_export(concat_model, tmp_path, bad, message):
    from scanside.export import export_model

    model = as_segmenter(concat_model, tmp_path / "model", labels=bad)
    with pytest.raises(InputError, match=message):
        export_model(model, tmp_path / "engine")
    assert not (tmp_path / "engine").exists()


@pytest.mark.parametrize("seeds", [0, 65, 1.5, True])
def test_seeds_are_checked(seeds):
    with pytest.raises(InputError, match="seeds"):
        segment.check_seeds(seeds)


@pytest.mark.parametrize("threshold", [0, 1, -0.1, "0.5"])
def test_thresholds_are_checked(threshold):
    with pytest.raises(InputError, match="threshold"):
        segment.check_threshold(threshold)
