"""The benchmark harness on the tiny model: protocol, JSON structure, peers' handling."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from scanside.bench import report
from scanside.bench.flops import count_flops
from scanside.bench.harness import Settings, run_bench, stage_table
from scanside.bench.peer_env import run_peers
from scanside.cli import main

STAGES = {"text", "vae_encode", "unet_step", "unet_total", "scheduler", "vae_decode", "total"}


@pytest.fixture(scope="module")
def result(tiny_engine):
    return run_bench(tiny_engine, Settings(repeat=3, warmup=1, steps=10, strength=0.5),
                     progress=False)


def test_json_structure(result):
    assert result["format"] == "scanside-bench" and result["format_version"] == 1
    assert set(result["stages"]) == STAGES
    for stats in result["stages"].values():
        assert stats["min"] <= stats["median"] <= stats["p90"]
    assert result["stages"]["total"]["n"] == 3
    # PLMS (the model's own scheduler) makes 10 x 0.5 + 1 UNet calls: its warm-up repeats one
    assert result["stages"]["unet_step"]["n"] == 3 * result["settings"]["unet_steps"] == 18
    assert result["precision"] == "fp32" and result["backend"] == "cpu"
    assert result["memory"]["peak_rss_bytes"] > 0 and result["memory"]["engine_weight_bytes"] > 0
    assert result["peak"]["gflops"] > 0
    assert {"cpu", "gpu", "libraries", "python"} <= set(result["machine"])
    assert "onnxruntime" in result["machine"]["libraries"]
    json.dumps(result)  # serialisable as is


def test_flops_are_counted_for_every_model_stage(result):
    for stage in ("text", "vae_encode", "unet_step", "vae_decode"):
        assert result["stages"][stage]["gflop"] > 0
        assert result["stages"][stage]["fraction_of_peak"] > 0


def test_unet_flops_match_a_hand_count(tiny_engine):
    """Guidance doubles the UNet batch, and with it the FLOPs, exactly."""
    unet = tiny_engine / "unet.onnx"
    one = count_flops(unet, {"UB": 1, "h": 8, "w": 8})
    two = count_flops(unet, {"UB": 2, "h": 8, "w": 8})
    assert one.unknown_nodes == 0 and two.flops == 2 * one.flops


def test_scheduler_overhead_is_loop_minus_model_calls():
    runs = [{"loop": [1.0], "unet": [0.3, 0.3], "text": [0.1], "total": [2.0]}]
    table = stage_table(runs)
    assert table["scheduler"]["median"] == pytest.approx(0.3)
    assert table["unet_total"]["median"] == pytest.approx(0.6)


def test_table_and_plot(result, tmp_path):
    text = report.table(result)
    for label in ("UNet step (each)", "VAE decode", "end to end", "scheduler overhead",
                  "peak RSS", "machine peak"):
        assert label in text
    pytest.importorskip("matplotlib")
    report.plot(result, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dicom_stages(tiny_engine, tmp_path):
    from tests.dicom.conftest import ct_phantom, ct_slice

    dcm = ct_slice(tmp_path / "ct.dcm", ct_phantom(), 0.0, 1, "1.2.826.0.1.9")
    out = run_bench(tiny_engine, Settings(repeat=1, warmup=0, steps=4, strength=0.5, dicom=dcm),
                    progress=False)
    assert {"dicom_read", "dicom_write"} <= set(out["stages"])


def test_peers_skipped_with_a_clear_message_when_their_environment_is_missing(tiny_model, tmp_path):
    peers = run_peers(tiny_model, "0" * 64, {"task": "enhance", "size": 64, "steps": 4,
                                             "strength": 0.5, "guidance": 1.0, "repeat": 1,
                                             "warmup": 0},
                      python=Path(sys.executable).with_name("no-such-python"))
    assert len(peers) == 1 and "lacks torch, diffusers, optimum.onnxruntime" in peers[0]["skipped"]
    assert "requirements-peers.txt" in peers[0]["skipped"]


def test_peers_run_on_the_tiny_model(tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("optimum.onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    peers = run_peers(tiny_model, "1" * 64, {"task": "enhance", "size": 64, "steps": 4,
                                             "strength": 0.5, "guidance": 1.0, "repeat": 1,
                                             "warmup": 0})
    assert [p["name"].split()[0] for p in peers] == ["diffusers", "optimum-onnx"], peers
    assert all(p["total"]["median"] > 0 for p in peers)


def test_cli(tiny_engine, tmp_path, capsys):
    code = main(["bench", str(tiny_engine), "--repeat", "1", "--warmup", "0", "--steps", "4",
                 "--strength", "0.5", "--json", str(tmp_path / "b.json")])
    assert code == 0
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["steps"] == 4
    assert "end to end" in capsys.readouterr().out


def test_cli_tiles_a_size_above_the_engines_and_refuses_peers_without_model(tiny_engine, tmp_path,
                                                                           capsys):
    out = tmp_path / "b.json"
    assert main(["bench", str(tiny_engine), "--size", "128", "--repeat", "1", "--warmup", "0",
                 "--steps", "2", "--strength", "0.5", "--json", str(out)]) == 0
    # 64 px tiles overlapping by 16 (the divisor) over 128 px: 3 x 3 of them.
    assert json.loads(out.read_text())["settings"]["tiles"] == 9
    assert main(["bench", str(tiny_engine), "--peers"]) == 2
    assert "--model MODEL_DIR" in capsys.readouterr().err


def test_one_run_is_one_pass_even_where_the_model_defaults_to_an_ensemble(tiny_engine, tmp_path):
    # A stage breakdown (and the peers it is compared with) is of one pass, so the bench pins
    # ensemble 1 for a model whose manifest asks for more views. The bench counts the passes
    # each timed run made; an engine that asks for 8 views shows that the pin is what holds.
    import shutil

    from scanside import Pipeline
    from scanside.bench.harness import test_image
    from scanside.runtime.timing import Recorder

    engine = shutil.copytree(tiny_engine, tmp_path / "engine-8-views")
    manifest = json.loads((engine / "manifest.json").read_text())
    manifest["enhance_defaults"] = {**manifest.get("enhance_defaults", {}), "ensemble": 8}
    (engine / "manifest.json").write_text(json.dumps(manifest))

    # The premise: enhancing with this engine's own settings runs 8 passes.
    pipe = Pipeline.load(engine)
    pipe.timer = Recorder()
    pipe.enhance(test_image(64, 0))
    assert len(pipe.timer.take()["loop"]) == 8

    settings = Settings(repeat=2, warmup=0, steps=10, strength=0.5)
    out = run_bench(engine, settings, progress=False)
    plain = run_bench(tiny_engine, settings, progress=False)
    assert out["settings"]["ensemble"] == out["settings"]["passes_per_image"] == 1
    # One pass: as many UNet calls per run as on the same engine without an ensemble default.
    assert out["settings"]["unet_steps"] == plain["settings"]["unet_steps"] == 6
    assert out["stages"]["unet_step"]["n"] == 2 * 6


def test_passes_are_counted_not_assumed():
    from scanside.bench.harness import passes_per_image

    one = {"loop": [0.1], "unet": [0.05]}
    assert passes_per_image([one, one], [1, 1]) == 1
    assert passes_per_image([{"loop": [0.1] * 8}], [1]) == 8
    assert passes_per_image([{"loop": [0.1] * 6}], [3]) == 2  # 3 frames, 2 views each
    with pytest.raises(RuntimeError, match="different numbers of passes"):
        passes_per_image([one, {"loop": [0.1, 0.1]}], [1, 1])


def test_gpu_flags_reach_the_pipeline(tiny_engine, tmp_path, monkeypatch):
    """`scanside bench --backend B --cuda-graph` and `--series N --backend B` load the pipeline
    on B with the graphs: both were dropped before (the series ran on the CPU whatever the
    backend, and no run captured graphs), which only a GPU run would have shown."""
    from scanside import Pipeline
    from scanside.runtime.engines import GpuOptions

    asked = []
    load = Pipeline.load.__func__

    def recording(cls, engine_dir=None, backend="cpu", *args, **kwargs):
        asked.append((backend, kwargs.get("gpu")))
        return load(cls, engine_dir, "cpu", *args, **{**kwargs, "gpu": GpuOptions()})

    monkeypatch.setattr(Pipeline, "load", classmethod(recording))
    for extra in ([], ["--series", "2", "--size", "64", "--workers", "1"]):
        asked.clear()
        assert main(["bench", str(tiny_engine), "--backend", "cuda", "--cuda-graph", "--repeat",
                     "1", "--warmup", "0", "--steps", "4", "--strength", "0.5", *extra]) == 0
        assert asked == [("cuda", GpuOptions(cuda_graph=True))], extra
