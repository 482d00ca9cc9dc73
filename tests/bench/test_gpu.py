"""The prepared GPU run's plumbing on the CPU (the full dry run: bench/gpu/README.md)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from scanside.bench import gpu

REPO = Path(__file__).resolve().parents[2]


def test_steps_that_do_not_fit_the_deadline_are_skipped_and_said(tmp_path):
    assert gpu.main(["--backend", "cpu", "--out", str(tmp_path), "--deadline", "60",
                     "--steps", "versions,sd15"]) == 0
    steps = json.loads((tmp_path / "gpu.json").read_text())["steps"]
    assert steps["versions"]["onnxruntime"] and "CPUExecutionProvider" in steps["versions"]["providers"]
    assert steps["sd15"]["skipped"].endswith("needs ~240 s")
    assert "provenance" in json.loads((tmp_path / "gpu.json").read_text())


def test_the_series_step_measures_the_model_and_the_cpu_side(tmp_path):
    args = argparse.Namespace(slices=2, size=64, backend="cpu")
    out = gpu.series(args)
    assert set(out["workers"]) == {"1", "2", "4"}
    for figures in out["workers"].values():
        assert figures["backend"] == "cpu" and figures["cpu_side_failures"] == 0
        # The identity model does the batch's reading and writing alone: faster than the model.
        assert figures["cpu_side_slices_per_second"] > figures["slices_per_second"] > 0


def test_the_kit_packs_parts_into_call_sized_loads(tmp_path):
    spec = importlib.util.spec_from_file_location("prepare", REPO / "bench/gpu/prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    wheel = tmp_path / "big-1.0-py3-none-any.whl"
    wheel.write_bytes(bytes(range(256)) * 40)  # 10,240 bytes
    parts_dir = tmp_path / "parts"
    parts_dir.mkdir()
    parts = prepare.split(wheel, parts_dir, 3000)
    assert [p.stat().st_size for p in parts] == [3000, 3000, 3000, 1240]
    assert b"".join(p.read_bytes() for p in parts) == wheel.read_bytes()
    small = tmp_path / "small.whl.sha256"
    small.write_text("x" * 100)
    loads = prepare.pack(parts + [small], 3200)
    assert all(sum(f.stat().st_size for f in load) <= 3200 for load in loads)
    assert len(loads) == 4 and sorted(f for load in loads for f in load) == sorted(parts + [small])
