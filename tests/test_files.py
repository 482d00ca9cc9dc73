"""Atomic writes: all or nothing, never over a file, with ordinary permissions."""

from __future__ import annotations

import os

import pytest

from scanside.errors import InputError
from scanside.files import atomic_path


def test_written_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_never_over_an_existing_file(tmp_path):
    (tmp_path / "c.txt").write_text("keep")
    with pytest.raises(InputError, match="already exists"):
        with atomic_path(tmp_path / "c.txt"):
            pass
    assert (tmp_path / "c.txt").read_text() == "keep"
