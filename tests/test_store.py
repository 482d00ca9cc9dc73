"""Outputs on a store (scanside.store): S3 through moto's server on loopback (a real S3
endpoint speaking the protocol), and a non-object filesystem (fsspec's in-memory one) for the
write-partial-then-move path."""

from __future__ import annotations

import uuid

import pytest

from scanside.errors import InputError, OutputError
from scanside.store import Store, is_store, local_path, redact

pytest.importorskip("pyarrow")


def bucket_uri(endpoint: str, prefix: str = "run", create: bool = True) -> str:
    """A fresh bucket; the test credentials ride in the URI (pyarrow reads them there), so
    Ray's worker processes need no environment set up."""
    import pyarrow.fs as pafs

    name = f"b{uuid.uuid4().hex[:12]}"
    query = f"endpoint_override={endpoint}&region=us-east-1"
    if create:
        fs, _ = pafs.FileSystem.from_uri(f"s3://test:test@{name}?{query}&allow_bucket_creation=true")
        fs.create_dir(name)
    return f"s3://test:test@{name}/{prefix}?{query}"


def test_uris_and_local_paths_are_told_apart():
    assert is_store("s3://bucket/x") and is_store("gs://b/x") and is_store("memory://x")
    assert not is_store("/data/out") and not is_store("file:///data/out") and not is_store("c:x")
    assert local_path("file:///data/my%20out") == "/data/my out"
    # Messages never carry a secret: no user info, no query string.
    assert redact("s3://key:secret@bucket/p?secret_key=x") == "s3://***@bucket/p"


def test_s3_write_is_visible_whole_and_reads_back(s3_endpoint):
    store = Store(bucket_uri(s3_endpoint))
    assert store.object_store
    store.check_writable()
    store.write("series/IM00001.dcm", b"DICM" * 100)
    assert store.exists("series/IM00001.dcm") and not store.exists("series/IM00002.dcm")
    with store.open_input("series/IM00001.dcm") as f:
        assert f.read() == b"DICM" * 100
    assert "test" not in store.name("series/IM00001.dcm")


def test_a_missing_bucket_is_refused_before_any_work_naming_it(s3_endpoint):
    store = Store(bucket_uri(s3_endpoint, create=False))
    with pytest.raises(InputError, match=r"out_dir s3://\*\*\*@b[0-9a-f]+/run: cannot be written") as err:
        store.check_writable()
    assert "endpoint_override" not in str(err.value)
    with pytest.raises(OutputError, match="IM1.dcm"):
        store.write("s/IM1.dcm", b"x")


def test_a_filesystem_with_renames_writes_a_partial_then_moves_it(monkeypatch):
    pytest.importorskip("fsspec")
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    root = f"memory://scanside-test-{uuid.uuid4().hex[:8]}"
    store = Store(root + "/out")
    assert not store.object_store
    mem = fsspec.filesystem("memory")
    moves = []
    original = MemoryFileSystem.mv
    monkeypatch.setattr(MemoryFileSystem, "mv", lambda self, a, b, **kw: (
        moves.append((a, b)), original(self, a, b, **kw)))
    store.write("s/IM00001.dcm", b"abc")
    assert [a.rsplit("/", 1)[-1] for a, _ in moves] == ["IM00001.dcm.partial"]
    assert mem.cat(f"{root}/out/s/IM00001.dcm") == b"abc"
    # A partial an interrupted run left is removed by the next run; finished files stay.
    mem.pipe(f"{root}/out/s/IM00002.dcm.partial", b"half")
    assert store.remove_partials() == 1
    assert not mem.exists(f"{root}/out/s/IM00002.dcm.partial")
    assert mem.exists(f"{root}/out/s/IM00001.dcm")


def test_an_unknown_scheme_is_refused_with_what_to_install():
    with pytest.raises(InputError, match="neither pyarrow nor fsspec can open it"):
        Store("nosuchfs://bucket/x")
