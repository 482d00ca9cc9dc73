"""Engine directories are checked before anything runs, with a message that says the fix."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from scanside.errors import EngineError
from scanside.runtime.artifacts import FORMAT_VERSION, MANIFEST, component_files, read_manifest


@pytest.fixture
def engine_copy(tiny_engine, tmp_path):
    return shutil.copytree(tiny_engine, tmp_path / "engine")


def edit_manifest(engine_dir, change):
    path = engine_dir / MANIFEST
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_reads_a_good_engine(tiny_engine):
    """What is read is what export measured and wrote, field for field (a field to_json or
    from_json drops, renames or rounds shows here), and it describes the files there."""
    from tests.conftest import EXPORTED

    manifest = read_manifest(tiny_engine, verify=True)
    assert set(manifest.components) == {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
    assert manifest == EXPORTED[tiny_engine]  # parity figures, specs, scheduler, defaults ...
    assert manifest.to_json() == json.loads((tiny_engine / MANIFEST).read_text())
    for component in manifest.components.values():
        files = component_files(tiny_engine, component)
        assert component.bytes == sum(f.stat().st_size for f in files)
        assert component.sha256 == hashlib.sha256(files[0].read_bytes()).hexdigest()


def test_missing_directory(tmp_path):
    with pytest.raises(EngineError, match="no such engine directory.*scanside export"):
        read_manifest(tmp_path / "nope")


def test_foreign_directory(tmp_path):
    (tmp_path / "README.txt").write_text("not an engine")
    with pytest.raises(EngineError, match="not a scanside engine directory"):
        read_manifest(tmp_path)


def test_other_format_version(engine_copy):
    edit_manifest(engine_copy, lambda d: d.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(EngineError, match=f"format version {FORMAT_VERSION + 1}.*rebuild it"):
        read_manifest(engine_copy)


def test_foreign_magic(engine_copy):
    edit_manifest(engine_copy, lambda d: d.update(magic="something-else"))
    with pytest.raises(EngineError, match="not a scanside manifest"):
        read_manifest(engine_copy)


def test_truncated_component(engine_copy):
    unet = engine_copy / "unet.onnx"
    unet.write_bytes(unet.read_bytes()[:1000])
    with pytest.raises(EngineError, match="unet.onnx: 1000 bytes"):
        read_manifest(engine_copy)


def test_same_size_different_content_caught_by_verify(engine_copy):
    unet = engine_copy / "unet.onnx"
    data = bytearray(unet.read_bytes())
    data[-1] ^= 0xFF
    unet.write_bytes(bytes(data))
    read_manifest(engine_copy)  # sizes alone cannot see it
    with pytest.raises(EngineError, match="content hash differs"):
        read_manifest(engine_copy, verify=True)


def with_external_weights(engine_dir, recorded_hash):
    """The engine's UNet re-saved with its weights in unet.onnx.data, as export saves a large
    one, and the manifest's hash for it set by ``recorded_hash(onnx_file)``."""
    onnx = pytest.importorskip("onnx")
    from scanside.export.precision import save

    unet = engine_dir / "unet.onnx"
    save(onnx.load(str(unet)), unet, 0)  # 0 bytes: every weight goes to the external file
    files = [unet, unet.with_name("unet.onnx.data")]
    assert files[1].is_file()
    edit_manifest(engine_dir, lambda d: d["components"]["unet"].update(
        sha256=recorded_hash(unet), bytes=sum(f.stat().st_size for f in files)))
    return files[1]


def test_verify_covers_external_weights(engine_copy):
    """A graph with external weights is the same file whatever its weights: the hash covers the
    weights too, so a changed weight file is caught (and two models never share a hash)."""
    from scanside.runtime.artifacts import content_hash

    weights = with_external_weights(engine_copy, content_hash)
    read_manifest(engine_copy, verify=True)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    read_manifest(engine_copy)  # the same size
    with pytest.raises(EngineError, match="unet.onnx: content hash differs"):
        read_manifest(engine_copy, verify=True)


def test_an_older_manifest_that_hashed_the_graph_alone_says_so(engine_copy):
    from scanside.runtime.artifacts import sha256_file

    with_external_weights(engine_copy, sha256_file)
    read_manifest(engine_copy)  # it loads as before
    with pytest.raises(EngineError, match="unet.onnx.data: the manifest's hash covers unet.onnx "
                                          "alone .* cannot be verified; rebuild it"):
        read_manifest(engine_copy, verify=True)


def test_garbage_manifest(engine_copy):
    (engine_copy / MANIFEST).write_text("{not json")
    with pytest.raises(EngineError, match="unreadable"):
        read_manifest(engine_copy)


def test_a_model_folder_stands_for_its_engine(tmp_path):
    from scanside.runtime.artifacts import MANIFEST, engine_folder

    (tmp_path / "model" / "engine").mkdir(parents=True)
    (tmp_path / "model" / "engine" / MANIFEST).write_text("{}")
    assert engine_folder(tmp_path / "model") == tmp_path / "model" / "engine"
    assert engine_folder(tmp_path / "model" / "engine") == tmp_path / "model" / "engine"
    (tmp_path / "model" / MANIFEST).write_text("{}")  # an engine directory is itself
    assert engine_folder(tmp_path / "model") == tmp_path / "model"
    assert engine_folder(tmp_path / "elsewhere") == tmp_path / "elsewhere"
