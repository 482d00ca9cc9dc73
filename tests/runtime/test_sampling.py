"""scanside.Sampling: the one owner of the enhancement settings."""

from __future__ import annotations

import numpy as np
import pytest

from scanside import Pipeline, Sampling
from scanside.errors import InputError
from scanside.runtime.sampling import DEFAULTS


@pytest.mark.parametrize("setting,value", [
    ("prompt", 3), ("negative_prompt", b"x"), ("strength", 0), ("strength", 1.5),
    ("strength", float("nan")), ("steps", 0), ("steps", 2.5), ("steps", True),
    ("guidance", -1), ("guidance", float("inf")), ("scheduler", "heun"), ("seed", -1),
    ("seed", 1.0), ("ensemble", 3), ("ensemble", True), ("consistency_px", -2),
    ("consistency_px", [32, 2]), ("consistency_px", "8"), ("noise_factor", 0),
])
def test_a_bad_setting_is_named_when_the_object_is_made(setting, value):
    with pytest.raises(InputError, match=rf"^{setting}: "):
        Sampling(**{setting: value})


def test_resolution_takes_the_caller_then_the_model_then_scanside():
    model = {"prompt": "low-dose CT, denoise", "strength": 0.05, "steps": 20}
    resolved = Sampling(steps=8).resolve(model)
    assert (resolved.prompt, resolved.strength, resolved.steps) == ("low-dose CT, denoise", 0.05, 8)
    assert resolved.guidance == DEFAULTS["guidance"] and resolved.ensemble == DEFAULTS["ensemble"]
    assert Sampling().resolve({}).strength == DEFAULTS["strength"]
    with pytest.raises(InputError, match="enhance_defaults: unknown settings"):
        Sampling().resolve({"strenght": 0.1})


def test_keywords_or_an_object_but_not_both():
    assert Sampling.of(strength=0.2, steps=None) == Sampling(strength=0.2)
    assert Sampling.of(Sampling(steps=3)) == Sampling(steps=3)
    with pytest.raises(InputError, match=r"sampling: given together with \['strength'\]"):
        Sampling.of(Sampling(steps=3), strength=0.2)
    with pytest.raises(InputError, match="expected a scanside.Sampling"):
        Sampling.of({"steps": 3})


def test_a_pair_is_kept_as_a_tuple_and_read_as_a_band():
    s = Sampling(consistency_px=[2, 32])
    assert s.consistency_px == (2, 32) and s.consistency == (2.0, 32.0)
    assert hash(s) == hash(Sampling(consistency_px=(2, 32)))  # frozen and hashable
    assert Sampling(consistency_px=8).consistency == (8.0, None)


def test_the_fingerprint_shape_of_earlier_versions_is_kept():
    # Derived UIDs come from this dict: noise_factor only when not 1, seed only when given.
    resolved = Sampling().resolve({})
    assert "seed" not in resolved.identity("ddim") and "noise_factor" not in resolved.identity("ddim")
    given = Sampling(seed=0, noise_factor=1.5).resolve({}).identity("ddim")
    assert given["seed"] == 0 and given["noise_factor"] == 1.5 and given["scheduler"] == "ddim"


def test_object_and_keywords_enhance_alike(tiny_engine):
    pipe = Pipeline.load(tiny_engine)
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    s = Sampling(steps=4, strength=0.5, seed=3)
    assert np.array_equal(pipe.enhance(image, s), pipe.enhance(image, steps=4, strength=0.5, seed=3))
    assert pipe.fingerprint(s) == pipe.fingerprint(steps=4, strength=0.5, seed=3)
    assert pipe.describe(s) == pipe.describe(steps=4, strength=0.5, seed=3)
    assert pipe.fingerprint(s) != pipe.fingerprint(s.replace(seed=4))
    assert "seed 3" in pipe.describe(s)


def test_window_is_a_dicom_setting(tiny_engine):
    with pytest.raises(InputError, match=r"^window: .*enhance_dataset"):
        Pipeline.load(tiny_engine).enhance(np.zeros((64, 64), np.float32), window=(40, 400))


def test_names_that_moved_say_where():
    with pytest.raises(ImportError, match=r"moved to scanside\.runtime\.sampling\.check_noise_factor"):
        from scanside.runtime.pipeline import check_noise_factor  # noqa: F401
    with pytest.raises(ImportError, match=r"renamed scanside\.training"):
        import scanside.models  # noqa: F401
    with pytest.raises(ImportError, match=r"moved to scanside\.cli\.options\.consistency_arg"):
        from scanside.cli import consistency_arg  # noqa: F401
    from scanside.runtime.pipeline import ENHANCE_DEFAULTS, check_consistency  # still there

    assert ENHANCE_DEFAULTS["strength"] == 0.3 and check_consistency(8) == (8.0, None)


def test_a_float_count_of_views_is_refused_when_made():
    with pytest.raises(InputError, match="^ensemble: 2.0"):
        Sampling(ensemble=2.0)


def test_node_settings_take_the_old_dict_or_a_sampling(tmp_path):
    from scanside.node import NodeSettings

    assert NodeSettings(spool=tmp_path, forward=[], sampling={"strength": 0.1}).sampling == \
        Sampling(strength=0.1)
    with pytest.raises(InputError, match="^strength: "):  # at construction, not at a series
        NodeSettings(spool=tmp_path, forward=[], sampling={"strength": 2})
