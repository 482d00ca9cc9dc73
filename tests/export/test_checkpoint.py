"""A model's own settings (MODEL_DIR/scanside.json) are checked as a caller's are."""

from __future__ import annotations

import json

import pytest

from scanside.errors import InputError
from scanside.export.checkpoint import SETTINGS_FILE, read_enhance_defaults


def test_the_models_enhance_settings_are_read_and_checked(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"enhance": {"strength": 0.05, "steps": 20}}))
    assert read_enhance_defaults(tmp_path) == {"strength": 0.05, "steps": 20}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"enhance": {"strength": 2}}))
    with pytest.raises(InputError, match=r"scanside\.json: enhance\.strength: 2\.0 is outside"):
        read_enhance_defaults(tmp_path)
