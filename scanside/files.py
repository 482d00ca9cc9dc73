"""Writing files so that a crash never leaves half a file, and reading image files."""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from scanside.errors import InputError

IMAGE_SUFFIXES = (".png", ".npy")
PARTIAL_SUFFIX = ".partial"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_existing(target: Path, overwrite: bool = False) -> None:
    """Check before any work is done that ``target`` may be written."""
    if Path(target).exists() and not overwrite:
        raise InputError(f"{target}: already exists; scanside never writes over a file — "
                         "choose another output, remove it, or pass overwrite=True (--overwrite)")


@contextmanager
def atomic_path(target: Path, overwrite: bool = False, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success only.
    ``durable``: the file's data and the rename are synced to disk, so a power cut leaves
    either the whole file or none (what a node must know before it acknowledges)."""
    target = Path(target)
    refuse_existing(target, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            sync(tmp)
        # mkstemp makes the file private (0600); the result gets the mode any new file would.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
        if durable:
            sync(target.parent)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:  # e.g. the disk went read-only: the next run's remove_partials takes it
            pass


def write_json(path: Path, value: Any, durable: bool = False, indent: int = 1) -> None:
    """``value`` as indented JSON at ``path``, atomically (a full disk leaves the old file
    whole); the folder is made if missing."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True, durable=durable) as tmp:
        Path(tmp).write_text(json.dumps(value, indent=indent) + "\n", encoding="utf-8")


def sync(path: "str | Path") -> None:
    """fsync a file or a folder (a folder's entry for a renamed file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_partials(folder: Path) -> int:
    """Delete what an interrupted ``atomic_path`` left under ``folder`` (``.NAME.*.partial``);
    call it only while holding ``folder_lock``, so no live writer's file is taken."""
    removed = 0
    for path in Path(folder).rglob(f".*{PARTIAL_SUFFIX}"):
        if path.is_file():
            path.unlink()
            removed += 1
    return removed


@contextmanager
def folder_lock(folder: Path, argument: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` or refuse at once: two runs writing one output
    folder would race for the same files. The lock is taken on the folder itself (flock on a
    directory descriptor), so no lock file is left behind; the kernel drops it when the
    process dies, however it dies."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{argument}: {folder} is being written by another scanside process "
                             "(it holds the folder's lock); wait for it or choose another "
                             "folder") from None
        yield
    finally:
        os.close(fd)


def read_image(path: Path) -> np.ndarray:
    """PNG (8/16-bit gray, RGB) as uint8/uint16 arrays; NPY as stored."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a readable .npy array ({exc})") from exc
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: unsupported file type {path.suffix!r}; give .png or .npy "
                         "(DICOM input comes with scanside.dicom)")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I"):
                return np.asarray(im, dtype=np.uint32).astype(np.uint16)
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB" if "A" in im.mode or im.mode == "P" else "L")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a readable PNG ({exc})") from exc


def write_image(path: Path, image: np.ndarray, like: np.dtype, overwrite: bool = False) -> None:
    """Write a [0, 1] float image as PNG at the input's bit depth, or as float32 NPY."""
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        if path.suffix.lower() == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, image.astype(np.float32))
            return
        from PIL import Image

        if like == np.uint16:
            pixels = (np.clip(image, 0, 1) * 65535).round().astype(np.uint16)
        else:
            pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp, format="PNG")


def hash_file_into(digest: "hashlib._Hash", path: Path, chunk: int = 1 << 22) -> None:
    """Feed ``path``'s bytes to ``digest`` a chunk at a time (engine files run to gigabytes)."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)


def files_hash(paths: "list[Path]") -> str:
    """sha256 over the files' contents, one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        hash_file_into(digest, path)
    return digest.hexdigest()


def folder_hash(path: Path) -> str:
    """sha256 over every file's relative name and content: a checkpoint folder's identity."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        hash_file_into(digest, file)
    return digest.hexdigest()
