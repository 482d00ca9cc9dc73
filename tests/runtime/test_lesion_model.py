"""The built-in lesion-candidate model shipped in the package: a segmentation engine with a
coded label, exported from the shipped checkpoint, within its size budget, and it marks a
clear disk and not the flat tissue around it."""

from __future__ import annotations

import numpy as np
import pytest

from scanside import Pipeline
from scanside.errors import InputError
from scanside.files import folder_hash
from scanside.runtime import default
from scanside.runtime.artifacts import read_manifest

BUDGET_BYTES = 15 * 1000 * 1000  # what the issue allowed the package to grow by


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load(default.default_lesion_engine_dir())


def test_it_is_a_segmentation_engine_with_a_coded_label(pipe):
    m = pipe.manifest
    assert m.task == "segment" and m.concat_scale == 10.0
    assert m.labels[0]["type"] == {"scheme": "SCT", "value": "52988006", "meaning": "Lesion"}
    assert m.segment_defaults["steps"] == 1 and m.segment_defaults["seeds"] == 1
    assert m.scheduler_config["timestep_spacing"] == "trailing"
    assert pipe.plan(None, 1, 1.0).timesteps.tolist() == [999.0]


def test_engine_was_exported_from_the_shipped_checkpoint():
    manifest = read_manifest(default.default_lesion_engine_dir(), verify=True)
    assert manifest.source_hash == folder_hash(default.LESION_MODEL / "checkpoint")


def test_checkpoint_and_engine_fit_the_budget():
    size = sum(p.stat().st_size for p in default.LESION_MODEL.rglob("*") if p.is_file())
    assert size <= BUDGET_BYTES, f"{size / 1e6:.1f} MB"


def test_it_marks_a_clear_disk_in_noisy_tissue(pipe):
    rng = np.random.default_rng(0)
    hu = np.full((128, 128), 40.0)
    y, x = np.mgrid[:128, :128]
    disk = (y - 64) ** 2 + (x - 60) ** 2 <= 8 ** 2
    hu[disk] += 60.0
    hu += rng.normal(0, 15, hu.shape)
    result = pipe.segment(((np.clip(hu, -1000, 1000) + 1000) / 2000).astype(np.float32))
    assert result.probability[disk].mean() > 0.5
    far = (y - 64) ** 2 + (x - 60) ** 2 > 20 ** 2
    assert result.mask[far].mean() < 0.01


def test_the_denoiser_is_refused_by_segment():
    with pytest.raises(InputError, match="enhancement engine"):
        Pipeline.load().segment(np.zeros((64, 64), np.float32))
