"""Nothing leaves the machine and nothing loaded can run code: no network, no pickle, and no
engine that reads files outside its own directory."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from scanside import Pipeline
from scanside.dicom import enhance_series
from scanside.errors import EngineError

PACKAGE = Path(__file__).resolve().parents[2] / "scanside"


def test_an_enhancement_with_sockets_blocked(monkeypatch, tmp_path):
    """The built-in model on a real CT slice, every way of opening a connection refused."""
    from tests.dicom.conftest import pydicom_file

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    for name in ("connect", "connect_ex", "sendto", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    source = tmp_path / "in" / "ct.dcm"
    source.parent.mkdir()
    shutil.copy(pydicom_file("CT_small.dcm"), source)
    report = enhance_series([source], Pipeline.load(), tmp_path / "out", progress=False)
    assert report.ok and len(report.written) == 1


def test_no_code_path_unpickles():
    """Weights come from ONNX and safetensors; arrays from npy/npz without pickle."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for pattern in (r"\bimport pickle\b", r"\bpickle\.loads?\(", r"\btorch\.load\(",
                        r"\bjoblib\b", r"\bdill\b", r"allow_pickle\s*=\s*True"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(PACKAGE)}: {pattern}")
        for line in text.splitlines():
            if "np.load(" in line and "allow_pickle=False" not in line:
                offenders.append(f"{path.relative_to(PACKAGE)}: {line.strip()}")
    assert not offenders


def test_an_engine_reading_outside_its_directory_is_refused(tiny_engine, tmp_path):
    """An initializer whose external data is '../secret.bin' (read by older ONNX Runtime
    builds such as JetPack's) is refused before any session opens."""
    onnx = pytest.importorskip("onnx")
    from onnx.external_data_helper import convert_model_to_external_data

    from scanside.runtime.artifacts import read_manifest, sha256_file

    engine = tmp_path / "engine"
    shutil.copytree(tiny_engine, engine)
    model = onnx.load(engine / "vae_decoder.onnx")
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin",
                                   size_threshold=0)
    onnx.save_model(model, engine / "vae_decoder.onnx")
    (tmp_path / "secret.bin").write_bytes((engine / "weights.bin").read_bytes())
    model = onnx.load(engine / "vae_decoder.onnx", load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    (engine / "vae_decoder.onnx").write_bytes(model.SerializeToString())
    manifest = (engine / "manifest.json").read_text()
    component = read_manifest(tiny_engine).components["vae_decoder"]
    size = (engine / "vae_decoder.onnx").stat().st_size
    manifest = manifest.replace(f'"bytes": {component.bytes}', f'"bytes": {size}', 1)
    manifest = manifest.replace(component.sha256, sha256_file(engine / "vae_decoder.onnx"))
    (engine / "manifest.json").write_text(manifest)
    with pytest.raises(EngineError, match=r"point outside the engine directory \('../secret.bin'\)"):
        Pipeline.load(engine)


def test_training_checkpoints_are_not_pickles(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors import safe_open

    from scanside.training.train import Checkpoints

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"step": 7, "model": net.state_dict(), "optimizer": opt.state_dict()}
    ckpt = Checkpoints(tmp_path)
    ckpt.save("unet", state)
    with safe_open(str(ckpt.path("unet")), framework="pt"):  # a safetensors file, no pickle
        pass
    loaded = ckpt.load("unet")
    assert loaded["step"] == 7 and sorted(loaded["optimizer"]["state"]) == [0, 1]
    for name, value in state["model"].items():
        assert np.array_equal(loaded["model"][name].numpy(), value.numpy())
    again = torch.optim.AdamW(net.parameters())
    again.load_state_dict(loaded["optimizer"])  # the optimizer takes it back as it was
    assert again.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
