"""One input/output contract per component. ONNX dynamic axes, TensorRT profiles, dummy
inputs and runtime buffers all derive from it; it travels in manifest.json.

A dimension is an int (fixed) or a name. A name is bound either statically (``static``: the
engine was exported at that size) or left free within ``ranges`` (min, opt, max).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import numpy as np

Dim = Union[int, str]
DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TensorSpec":
        return cls(data["name"], data["dtype"], tuple(data["shape"]))


@dataclass(frozen=True)
class IOSpec:
    component: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    static: Mapping[str, int] = field(default_factory=dict)
    ranges: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)

    def tensors(self) -> tuple[TensorSpec, ...]:
        return self.inputs + self.outputs

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX export's dynamic_axes: every named dim that is not statically bound."""
        axes: dict[str, dict[int, str]] = {}
        for t in self.tensors():
            free = {i: d for i, d in enumerate(t.shape) if isinstance(d, str) and d not in self.static}
            if free:
                axes[t.name] = free
        return axes

    def concrete(self, shape: tuple[Dim, ...], bindings: Mapping[str, int]) -> tuple[int, ...]:
        """A concrete shape: static bindings first, then ``bindings`` (e.g. the batch)."""
        values = {**bindings, **self.static}
        try:
            return tuple(d if isinstance(d, int) else int(values[d]) for d in shape)
        except KeyError as missing:
            raise ValueError(f"{self.component}: no size given for dimension {missing}") from None

    def dummy_inputs(self, bindings: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded inputs of the right shapes: normal floats, in-range token ids."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for t in self.inputs:
            shape = self.concrete(t.shape, bindings)
            if t.dtype.startswith("int"):
                feeds[t.name] = rng.integers(0, bindings.get("vocab", 2), shape).astype(DTYPES[t.dtype])
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(DTYPES[t.dtype])
        return feeds

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Refuse feeds whose names, dtypes or static dims break the contract."""
        for t in self.inputs:
            if t.name not in feeds:
                raise ValueError(f"{self.component}: input {t.name!r} missing")
            array = feeds[t.name]
            if array.dtype != DTYPES[t.dtype] or array.ndim != len(t.shape):
                raise ValueError(
                    f"{self.component}.{t.name}: got {array.dtype}{list(array.shape)}, "
                    f"expected {t.dtype}{list(t.shape)}"
                )
            for axis, (got, want) in enumerate(zip(array.shape, t.shape)):
                want = self.static.get(want, want) if isinstance(want, str) else want
                if isinstance(want, int) and got != want:
                    raise ValueError(
                        f"{self.component}.{t.name}: axis {axis} is {got}, the engine was "
                        f"exported for {want}"
                    )

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "static": dict(self.static),
            "ranges": {k: list(v) for k, v in self.ranges.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "IOSpec":
        return cls(
            component=data["component"],
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
            static={k: int(v) for k, v in data.get("static", {}).items()},
            ranges={k: tuple(v) for k, v in data.get("ranges", {}).items()},
        )


def size_bindings(height: int, width: int, factor: int, batch: int = 1,
                  unet_batch: int = 2) -> dict[str, int]:
    """Sizes for every named dim at one image size (``unet_batch`` 2: both guidance halves)."""
    return {"B": batch, "UB": unet_batch, "H": height, "W": width,
            "h": height // factor, "w": width // factor}
