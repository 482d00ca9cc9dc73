"""Shared fixtures: tiny models built from configs and exported once per test session."""

from __future__ import annotations

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped where there is none)")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from scanside.models import build

    return build("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model, tmp_path_factory):
    from scanside.export import export_model

    out = tmp_path_factory.mktemp("engines") / "tiny"
    export_model(tiny_model, out)
    return out


@pytest.fixture(scope="session")
def concat_model(tmp_path_factory):
    from scanside.models import build

    return build("tiny-concat", tmp_path_factory.mktemp("models") / "tiny-concat", seed=1)


@pytest.fixture(scope="session")
def concat_engine(concat_model, tmp_path_factory):
    from scanside.export import export_model

    out = tmp_path_factory.mktemp("engines") / "tiny-concat"
    export_model(concat_model, out)
    return out
