"""Stage timing hooks: the pipeline marks its stages; a benchmark records them.

The default timer does nothing, so the hot path pays one attribute lookup per stage.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator, Protocol


class StageTimer(Protocol):
    def stage(self, name: str) -> ContextManager[None]: ...


class NullTimer:
    def stage(self, name: str) -> ContextManager[None]:
        return nullcontext()


class Recorder:
    """Collects wall-clock seconds per stage name; a stage may occur many times per run."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.samples[name].append(time.perf_counter() - start)

    def take(self) -> dict[str, list[float]]:
        """The samples so far, and start afresh."""
        samples, self.samples = dict(self.samples), defaultdict(list)
        return samples
