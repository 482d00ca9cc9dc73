"""write_json: every result JSON says when, from which source, on what and on which engine."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import scanside
from scanside.bench import report
from scanside.runtime.host import cpu_info

ROOT = Path(scanside.__file__).resolve().parents[1]


def written(tmp_path, result, **kwargs):
    path = tmp_path / "out" / "result.json"  # the folder does not exist yet: made
    report.write_json(result, path, **kwargs)
    return json.loads(path.read_text())


def test_write_json_records_date_host_command_and_leaves_the_result_as_it_was(tmp_path):
    result = {"figure": 1.5}
    before = datetime.now(timezone.utc).replace(microsecond=0)
    data = written(tmp_path, result, argv=["scanside", "bench", "--repeat", "1"])
    assert result == {"figure": 1.5}  # the caller's dict is not changed
    assert data["figure"] == 1.5 and list(data)[-1] == "provenance"
    p = data["provenance"]
    assert p["version"] == 1 and p["reconstructed"] is False
    when = datetime.fromisoformat(p["date_utc"])
    assert when.utcoffset() == timedelta(0)
    assert before <= when <= datetime.now(timezone.utc) + timedelta(seconds=1)
    cpu = cpu_info()
    assert p["host"]["cpu_model"] == cpu["model"] and p["host"]["host_class"] == cpu["host_class"]
    assert p["host"]["usable_cores"] == cpu["usable_cores"] and p["host"]["python"]
    assert "gpu" in p  # None where nvidia-smi is absent
    assert p["command"] == ["scanside", "bench", "--repeat", "1"]
    assert p["engine"] is None and p["model_hash"] is None


def test_write_json_records_the_commit_in_a_checkout(tmp_path):
    data = written(tmp_path, {})
    source = data["provenance"]["scanside"]
    assert source["version"] == scanside.__version__
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: only the package version is recorded")
    assert source["commit"] == head and isinstance(source["dirty"], bool)
    assert all(p.startswith("scanside/") for p in source["modified_in_package"])


def test_outside_a_checkout_the_package_version_stands_in(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "checkout_root", lambda: None)
    source = written(tmp_path, {})["provenance"]["scanside"]
    assert source["commit"] is None and source["dirty"] is None
    assert source["version"] == scanside.__version__ and "package version" in source["from"]


def test_write_json_records_the_engine_by_its_manifest(tiny_engine, tmp_path):
    manifest = json.loads((tiny_engine / "manifest.json").read_text())
    # As scanside bench's result names it: by the "engine" field.
    data = written(tmp_path, {"engine": str(tiny_engine), "model_hash": manifest["source_hash"]})
    engine = data["provenance"]["engine"]
    assert engine["source_hash"] == manifest["source_hash"] == data["provenance"]["model_hash"]
    assert engine["precision"] == manifest["precision"]
    assert engine["components"]["unet"]["sha256"] == manifest["components"]["unet"]["sha256"]
    assert set(engine["components"]) == set(manifest["components"])
    # Or given by the caller, where the result names none.
    assert written(tmp_path, {}, engine=tiny_engine)["provenance"]["engine"] == engine


def test_bench_json_carries_provenance(tiny_engine, tmp_path):
    from scanside.cli import main

    out = tmp_path / "b.json"
    assert main(["bench", str(tiny_engine), "--repeat", "1", "--warmup", "0", "--steps", "2",
                 "--strength", "0.5", "--json", str(out)]) == 0
    p = json.loads(out.read_text())["provenance"]
    manifest = json.loads((tiny_engine / "manifest.json").read_text())
    assert p["engine"]["source_hash"] == manifest["source_hash"]
    assert p["date_utc"] and p["host"]["host_class"] and p["command"]


def test_a_list_of_runs_is_refused_with_the_fix():
    with pytest.raises(TypeError, match="under a key"):
        report.write_json([{"a": 1}], Path("unused.json"))


def test_paths_are_written_as_they_read_elsewhere(tmp_path):
    inside = report.portable_path(ROOT / "bench" / "README.md")
    # Relative to the checkout when there is one; a wheel has none, and keeps the path.
    assert inside == ("bench/README.md" if report.checkout_root() is not None
                      else str(ROOT / "bench" / "README.md"))
    assert report.portable_path(Path.home() / "x" / "y.json") == "~/x/y.json"
    assert report.command_line([str(ROOT / "scanside" / "bench" / "concurrency.py"), "--size",
                                "512"]) == ["python", "-m", "scanside.bench.concurrency", "--size",
                                            "512"]


def test_results_dir_is_date_and_host_class(tmp_path):
    folder = report.results_dir(tmp_path)
    date = datetime.now(timezone.utc).date().isoformat()
    assert folder == tmp_path / "bench" / "results" / f"{date}-{cpu_info()['host_class']}"
