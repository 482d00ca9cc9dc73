"""Shared fixtures: tiny models built from configs and exported once per test session, and
an S3 endpoint on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped where there is none)")


def build_model(factory, recipe: str, seed: int):
    from scanside.training import build

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on a loopback port; yields its URL."""
    pytest.importorskip("moto")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto's S3 server did not start")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)
