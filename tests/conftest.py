"""Shared fixtures: tiny models built from configs and exported once per test session."""

from __future__ import annotations

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped where there is none)")


def build_model(factory, recipe: str, seed: int):
    from scanside.models import build

    return build(recipe, factory.mktemp("models") / recipe, seed=seed)


def export_engine(factory, model, name: str):
    from scanside.export import export_model

    out = factory.mktemp("engines") / name
    export_model(model, out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_model(tmp_path_factory, "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model, tmp_path_factory):
    return export_engine(tmp_path_factory, tiny_model, "tiny")


@pytest.fixture(scope="session")
def concat_model(tmp_path_factory):
    return build_model(tmp_path_factory, "tiny-concat", seed=1)


@pytest.fixture(scope="session")
def concat_engine(concat_model, tmp_path_factory):
    return export_engine(tmp_path_factory, concat_model, "tiny-concat")
