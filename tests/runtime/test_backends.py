"""The GPU backends' GPU-free logic: backend choice and its messages, TensorRT profiles, plan
cache keys and invalidation, provider options, the trtexec script, and the refusal of ONNX
Runtime's silent CPU fallback. (What needs a GPU is in test_gpu.py, marked ``gpu``.)"""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from scanside.errors import BackendUnavailable
from scanside.runtime.artifacts import read_manifest
from scanside.runtime.default import default_engine_dir
from scanside.runtime.engines import Backend
from scanside.runtime.engines.devices import Gpu, choose
from scanside.runtime.engines.onnxruntime import cuda_options, tensorrt_options
from scanside.runtime.engines.tensorrt import (cache_root, cached_plan, plan_key,
                                               plan_path, profile_shapes, shapes_option,
                                               trtexec_command)

ORIN = Gpu("Orin (nvgpu)", (8, 7), 8 << 30)
CPU_ONLY = dict(ort_providers=lambda: ["CPUExecutionProvider"])


def no_gpu() -> Gpu:
    raise BackendUnavailable("CUDA: no GPU is visible (CUDA_VISIBLE_DEVICES, driver)")


@pytest.fixture()
def fake_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))


def test_an_absent_backend_names_the_package_and_the_install_command():
    with pytest.raises(BackendUnavailable) as err:
        choose("cuda", **CPU_ONLY)
    assert "not CUDAExecutionProvider" in str(err.value)
    assert "pip install 'scanside[gpu]'" in str(err.value) and "--backend cpu" in str(err.value)
    with pytest.raises(BackendUnavailable, match=r"scanside\[gpu\]"):
        choose("ort-tensorrt", **CPU_ONLY)


def test_tensorrt_without_a_gpu_says_so(fake_tensorrt):
    with pytest.raises(BackendUnavailable, match="no GPU is visible.*scanside\\[tensorrt\\]"):
        choose("tensorrt", gpu=no_gpu, **CPU_ONLY)


def test_auto_picks_the_fastest_present_and_says_why_not_the_others(fake_tensorrt):
    assert choose("auto", gpu=lambda: ORIN, **CPU_ONLY) == (
        Backend.TENSORRT, ["backend auto: chose tensorrt"])
    backend, notes = choose("auto", gpu=no_gpu, ort_providers=lambda: [
        "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert backend is Backend.CUDA
    assert notes[0].startswith("backend auto: not tensorrt: CUDA: no GPU is visible")
    assert notes[1].startswith("backend auto: not ort-tensorrt: ONNX Runtime here offers")
    assert notes[2] == "backend auto: chose cuda"


def test_auto_on_this_machine_falls_back_to_the_cpu_with_reasons():
    backend, notes = choose("auto")
    if backend is Backend.CPU:  # every development and CI machine of this project
        assert len(notes) == 4 and all("not" in n for n in notes[:3])


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="cpu, cuda, ort-tensorrt, tensorrt, auto"):
        choose("vulkan")


def built_in_unet():
    return read_manifest(default_engine_dir()).components["unet"]


def test_profiles_come_from_the_iospec_ranges():
    unet = built_in_unet()  # a dynamic engine: batch and image size free
    shapes = profile_shapes(unet.spec)
    low, opt, high = shapes["sample"]
    assert low[1] == opt[1] == high[1] == 8  # concat UNet: 4 latent + 4 conditioning channels
    assert low[2] < opt[2] < high[2] and low[0] <= opt[0] <= high[0]
    assert shapes["timestep"] == ((1,), (1,), (1,))
    text = shapes_option(unet.spec, 2)
    assert text.startswith(f"sample:{'x'.join(map(str, high))},timestep:1,")


def test_static_engines_have_one_shape_and_trtexec_uses_it(tiny_engine, tmp_path):
    unet = read_manifest(tiny_engine).components["unet"]
    for name, (low, opt, high) in profile_shapes(unet.spec).items():
        assert low[1:] == high[1:]  # only the batch may vary
    cmd = trtexec_command(tmp_path / "unet.onnx", tmp_path / "unet.plan", unet.spec, "fp32", 10,
                          tmp_path / "t.cache")
    assert "--stronglyTyped" in cmd and not any(c.startswith("--fp16") for c in cmd)
    assert f"--timingCacheFile={tmp_path / 't.cache'}" in cmd
    old = trtexec_command(tmp_path / "u.onnx", tmp_path / "u.plan", unet.spec, "int8", 8,
                          tmp_path / "t.cache")
    assert "--int8" in old and "--fp16" in old and "--stronglyTyped" not in old


def test_plan_keys_change_with_the_onnx_gpu_and_tensorrt():
    spec = built_in_unet().spec
    key = plan_key(spec, "a" * 64, ORIN, "10.3.0", "fp16")
    assert key.folder().startswith("orin-nvgpu-sm87-trt10.3.0-")
    others = [plan_key(spec, "b" * 64, ORIN, "10.3.0", "fp16"),
              plan_key(spec, "a" * 64, Gpu("NVIDIA RTX A4000", (8, 6), 16 << 30), "10.3.0", "fp16"),
              plan_key(spec, "a" * 64, ORIN, "10.7.0", "fp16")]
    assert len({k.folder() for k in [key, *others]}) == 4
    assert "onnx_sha256" in key.why_not(json.loads(json.dumps(others[0].__dict__)))


def test_a_stale_plan_is_never_loaded_and_the_reason_is_logged(tmp_path, caplog):
    spec = built_in_unet().spec
    old = plan_key(spec, "a" * 64, ORIN, "10.3.0", "fp32")
    path = plan_path(tmp_path, "unet", old)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"plan")
    (path.parent / "key.json").write_text(json.dumps(old.__dict__))
    assert cached_plan(tmp_path, "unet", old) == path  # the same key: reused
    new = plan_key(spec, "c" * 64, ORIN, "10.3.0", "fp32")  # the ONNX changed
    assert cached_plan(tmp_path, "unet", new) is None
    assert "built for other inputs (onnx_sha256" in caplog.text
    # A key.json edited by hand (or a half-written folder) does not make a plan valid either.
    (path.parent / "key.json").write_text(json.dumps({**old.__dict__, "precision": "fp16"}))
    assert cached_plan(tmp_path, "unet", old) is None


def test_plans_go_next_to_the_engine_or_to_the_user_cache(tmp_path, monkeypatch):
    assert cache_root(tmp_path, "f" * 64) == tmp_path / "tensorrt"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("os.access", lambda path, mode: False)  # a read-only engine directory
    assert cache_root(tmp_path, "f" * 64) == tmp_path / "cache" / "scanside" / ("f" * 16) / "tensorrt"


def test_provider_options_carry_caches_profiles_and_precision(tmp_path):
    spec = built_in_unet().spec
    options = tensorrt_options(spec, tmp_path, "int8", cuda_graph=False)
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path)
    assert options["trt_int8_enable"] == "True" and options["trt_fp16_enable"] == "True"
    for which, name in enumerate(("min", "opt", "max")):
        assert options[f"trt_profile_{name}_shapes"] == shapes_option(spec, which)
    assert all(isinstance(v, str) for v in options.values())  # ORT takes strings
    assert cuda_options(cuda_graph=True)["enable_cuda_graph"] == "1"
    assert tensorrt_options(spec, tmp_path, "fp32")["trt_fp16_enable"] == "False"


def test_a_silent_cpu_fallback_of_onnx_runtime_is_refused(monkeypatch, tiny_engine):
    import onnxruntime as ort

    from scanside.runtime.engines import onnxruntime as adapter

    component = read_manifest(tiny_engine).components["text_encoder"]
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = ort.InferenceSession

    def session(path, sess_options=None, providers=None):
        assert providers[0][0] == "CUDAExecutionProvider"  # asked for with its options
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", session)
    with pytest.raises(BackendUnavailable, match="fell back to \\['CPUExecutionProvider'\\]"):
        adapter.OrtEngine(tiny_engine / component.file, component.spec, Backend.CUDA)


def test_gpu_sessions_first_load_cuda_from_the_pip_packages(monkeypatch, tiny_engine):
    """onnxruntime-gpu finds CUDA and cuDNN in the nvidia-* pip packages only through
    preload_dlls (the GPU machine has them only there): called once before a GPU session,
    never for the CPU."""
    import onnxruntime as ort

    from scanside.runtime.engines import onnxruntime as adapter

    component = read_manifest(tiny_engine).components["text_encoder"]
    calls = []
    monkeypatch.setattr(ort, "preload_dlls", lambda: calls.append("preload"), raising=False)
    adapter.preload_gpu_libraries.cache_clear()
    adapter.OrtEngine(tiny_engine / component.file, component.spec, Backend.CPU)
    assert calls == []
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda path, sess_options=None, providers=None:
                        real(path, sess_options=sess_options, providers=["CPUExecutionProvider"]))
    for _ in range(2):
        with pytest.raises(BackendUnavailable):  # this machine has no CUDA: the fallback
            adapter.OrtEngine(tiny_engine / component.file, component.spec, Backend.CUDA)
    assert calls == ["preload"]
    adapter.preload_gpu_libraries.cache_clear()


def test_trtexec_script_is_valid_bash_with_one_command_per_component(tiny_engine, tmp_path):
    from scanside.export.tensorrt import trtexec_script

    manifest = read_manifest(tiny_engine)
    script = trtexec_script(tiny_engine, manifest)
    assert sum(line.startswith("trtexec ") for line in script.splitlines()) == 4
    path = tmp_path / "build.sh"
    path.write_text(script)
    # Run it with a stand-in trtexec that records its arguments: $ENGINE expands, one line each.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "trtexec").write_text('#!/bin/sh\necho "$@" >> "$LOG"\n')
    (bin_dir / "trtexec").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(tmp_path / "log")}
    assert subprocess.run(["bash", str(path)], env=env).returncode == 0
    calls = (tmp_path / "log").read_text().splitlines()
    assert len(calls) == 4
    assert f"--onnx={tiny_engine}/unet.onnx" in " ".join(calls)
    assert all(f"--saveEngine={tiny_engine}/tensorrt/trtexec/" in c for c in calls)


def test_cli_takes_every_backend_and_auto_runs_here(tmp_path, capsys):
    from scanside.cli import main

    out = tmp_path / "x.png"
    import numpy as np
    from PIL import Image

    Image.fromarray((np.arange(64 * 64) % 255).reshape(64, 64).astype("uint8")).save(tmp_path / "in.png")
    assert main(["enhance", str(tmp_path / "in.png"), "--out", str(out), "--backend", "auto"]) == 0
    assert out.is_file()
    assert main(["enhance", str(tmp_path / "in.png"), "--out", str(tmp_path / "y.png"),
                 "--backend", "tensorrt"]) == 2
    assert "backend tensorrt:" in capsys.readouterr().err


def test_reused_buffers_hold_the_largest_call_of_every_tensor():
    from scanside.runtime.engines.tensorrt import largest_shapes

    manifest = read_manifest(default_engine_dir())
    decoder = {n: s for n, s, _ in largest_shapes(manifest.components["vae_decoder"].spec)}
    high = manifest.components["vae_decoder"].spec.ranges
    assert decoder["latent"] == (high["B"][2], 4, high["h"][2], high["w"][2])
    assert decoder["image"] == (high["B"][2], 1, high["H"][2], high["W"][2])  # no input has H
    unet = {n: s for n, s, _ in largest_shapes(manifest.components["unet"].spec)}
    assert unet["out_sample"][0] == unet["sample"][0] == high["UB"][2]


def test_cpu_sessions_share_one_arena_and_large_ones_plan_no_memory_pattern(tiny_engine,
                                                                           monkeypatch):
    # The memory pattern allocated a second block for SD 1.5's VAE decoder activations on its
    # second call (+0.88 GiB at 512 px) while the arena kept the first run's buffers; small
    # models keep it (their many short calls gain from it).
    from scanside import Pipeline
    from scanside.runtime.engines import onnxruntime as module

    assert module.memory_pattern(8 << 20) and not module.memory_pattern(131 << 20)
    for name, engine in Pipeline.load(tiny_engine).engines.items():
        options = engine.session.get_session_options()
        assert options.enable_mem_pattern is True, name  # a few MB: small
        assert options.get_session_config_entry("session.use_env_allocators") == "1", name
    monkeypatch.setattr(module, "MEMORY_PATTERN_MAX_BYTES", 0)  # every component is large
    for name, engine in Pipeline.load(tiny_engine).engines.items():
        assert engine.session.get_session_options().enable_mem_pattern is False, name
