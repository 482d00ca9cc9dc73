"""Shared fixtures: tiny models built from configs and exported once per test session, an S3
endpoint on loopback, and a home of the session's own for Ray."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scanside.bench import raynode


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped where there is none)")
    config.addinivalue_line("markers", "slow: trains, exports an engine of its own (int8 "
                            "and other variants), enhances large images or with the built-in "
                            "model, kills processes, starts Orthanc, a node or Ray, or fuzzes; "
                            "`pytest -m \"not slow\"` is the quick tier (under 2 minutes on 2 "
                            "cores), plain `pytest` runs everything")
    from tests import system_tools

    system_tools.required()  # SCANSIDE_REQUIRE_SYSTEM_TOOLS: read once, a bad value stops here


def build_model(factory, recipe: str, seed: int):
    from scanside.training import build

    return build(recipe, factory.mktemp("models") / recipe, seed=seed)


EXPORTED: dict = {}  # engine folder -> the Manifest export_model returned for it


def export_engine(factory, model, name: str):
    from scanside.export import export_model

    out = factory.mktemp("engines") / name
    EXPORTED[out] = export_model(model, out)
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


SEGMENT_SETTINGS = {"prompt": "lesions", "strength": 1.0, "steps": 2, "guidance": 1.0,
                    "seeds": 3, "threshold": 0.5}


def as_segmenter(model, folder, labels=None, settings=None):
    """A copy of ``model`` whose scanside.json makes it a segmentation model (task, labels
    with their codes, its sampling)."""
    import json
    import shutil

    from scanside.training.train import LESION_LABELS

    shutil.copytree(model, folder)
    (folder / "scanside.json").write_text(json.dumps(
        {"task": "segment", "segment": settings or SEGMENT_SETTINGS,
         "labels": list(LESION_LABELS if labels is None else labels)}))
    return folder


@pytest.fixture(scope="session")
def seg_engine(concat_model, tmp_path_factory):
    """The tiny image-conditioned model exported as a segmentation engine."""
    model = as_segmenter(concat_model, tmp_path_factory.mktemp("seg") / "model")
    return export_engine(tmp_path_factory, model, "tiny-seg")


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


# Where Ray looks for (and a new local cluster writes) its token, and what sets its mode.
RAY_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


@pytest.fixture(scope="session")
def ray_home(tmp_path_factory):
    """HOME for every test that starts Ray (ask for this fixture): Ray 2.5x writes a token to
    ~/.ray/auth_token for each local cluster, and `ray start` and drivers read it; never the
    user's. The user's own Ray settings (token, mode, address) are left out too."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        for name in RAY_AUTH_VARIABLES:
            mp.delenv(name, raising=False)
        yield home


def ray_has_token_auth() -> bool:
    """Whether this Ray has token authentication (Ray 2.5x; the cluster extra allows older)."""
    import importlib.util

    try:
        return importlib.util.find_spec("ray._private.authentication") is not None
    except ModuleNotFoundError:
        return False


def ray_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a Ray process (or a scanside driver) whose home is ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in RAY_AUTH_VARIABLES}
    return {**env, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **extra}


class RayNode(raynode.RayNode):
    """scanside.bench.raynode.RayNode with ``home`` as its HOME (see ray_env)."""

    def __init__(self, *args: str, home: Path, timeout: float = 120, **env: str) -> None:
        super().__init__(*args, env=ray_env(home, **env), timeout=timeout)


ray_temp_dir = raynode.temp_dir  # a `ray start` cluster's sessions folder of its own
