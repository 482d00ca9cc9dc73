"""What an ONNX file points at outside itself, read without the ``onnx`` package.

An initializer may keep its weights in an external file named by its ``location`` entry; a
crafted engine can name ``../../etc/shadow`` or an absolute path there. Recent ONNX Runtime
releases refuse that themselves (since 1.24); older ones, such as the builds JetPack ships,
read it. So every location is checked against the engine directory before a session opens.

The reader walks the protobuf wire format (https://protobuf.dev/programming-guides/encoding/)
along ModelProto.graph (7) > GraphProto.initializer (5) and sparse_initializer (15: values 1,
indices 2) > TensorProto.external_data (13) > StringStringEntryProto key (1) / value (2),
field numbers from onnx.proto3. The file is memory-mapped and payloads skipped by length,
so a multi-GB file with embedded weights costs no copy.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterator

from scanside.errors import EngineError

LENGTH_DELIMITED, VARINT, FIXED64, FIXED32 = 2, 0, 1, 5


def varint(buf: memoryview, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def fields(buf: memoryview) -> Iterator[tuple[int, memoryview]]:
    """(field number, payload) of each length-delimited field of one message."""
    at = 0
    while at < len(buf):
        key, at = varint(buf, at)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            _, at = varint(buf, at)
        elif wire == FIXED64:
            at += 8
        elif wire == FIXED32:
            at += 4
        elif wire == LENGTH_DELIMITED:
            size, at = varint(buf, at)
            if at + size > len(buf):
                raise ValueError("truncated field")
            yield number, buf[at:at + size]
            at += size
        else:
            raise ValueError(f"wire type {wire}")


def tensors(graph: memoryview) -> Iterator[memoryview]:
    for number, payload in fields(graph):
        if number == 5:  # initializer
            yield payload
        elif number == 15:  # sparse_initializer: values, indices
            yield from (p for n, p in fields(payload) if n in (1, 2))


def external_locations(path: Path) -> list[str]:
    """Every external-data ``location`` of the initializers of the ONNX file ``path``."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return []
        # Not closed explicitly: the memoryview slices below keep it exported until they
        # are collected, and the mapping goes with them.
        model = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    locations = []
    for number, graph in fields(model):
        if number != 7:
            continue
        for tensor in tensors(graph):
            for n, entry in fields(tensor):
                if n != 13:
                    continue
                entry_fields = {k: bytes(v) for k, v in fields(entry)}
                if entry_fields.get(1) == b"location":
                    locations.append(entry_fields.get(2, b"").decode("utf-8", "replace"))
    return locations


def check_external_data(path: Path, root: Path) -> None:
    """Refuse an ONNX file whose external data lies outside ``root`` (the engine directory)."""
    try:
        locations = external_locations(path)
    except (ValueError, OSError) as exc:
        raise EngineError(f"{path}: not a readable ONNX file ({exc}); rebuild the engine with "
                          "`scanside export`") from None
    base = root.resolve()
    for location in locations:
        target = (path.parent / location).resolve()
        if Path(location).is_absolute() or (target != base and base not in target.parents):
            raise EngineError(f"{path}: its weights point outside the engine directory "
                              f"({location[:80]!r}); an engine must be self-contained — rebuild "
                              "it with `scanside export`, and do not load engines from an "
                              "untrusted source")
