"""How many slices run at once, and on how many threads each.

Measured on the built-in model (2-core AMD EPYC, 512 px, UNet alone): one call on 2 threads
0.466 s; two calls at once on 1 thread each 0.382 s a slice (1.22x); batching slices into one
call pays nothing (2 threads, batch 4: 0.451 s a slice). The small model's GroupNorm, SiLU and
layout reorders between its convolutions scale poorly across threads, and a slice's DICOM
decode, scheduler step and encode are single-threaded Python; two slices in flight fill both
gaps. So a CPU series runs ``workers`` slices at once, each engine call on its share of the
cores. ONNX Runtime sessions take concurrent ``run`` calls (the shared arena is locked), so
the workers share one Pipeline. GPU backends keep one set of device buffers per engine: there
the workers' engine calls take turns (``Pipeline.engine_lock``) while one worker's DICOM
decode and write overlap the other's GPU work.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def physical_cores(cpus: "set[int] | None" = None, sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """Physical cores among the CPUs this process may run on (its affinity: a container's
    cpuset, a Ray actor's or a `taskset`). ONNX Runtime's default counts every logical CPU of
    the machine; SMT siblings share one core's matrix units, so a thread on each only contends."""
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(
            range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))  # no topology (not Linux, or hidden): every CPU a core
        cores.add((package, core))
    return max(1, len(cores))


def default_workers(cores: Optional[int] = None) -> int:
    """Slices in flight on the CPU when the caller does not say: two where there are two
    cores or more (see the module docstring), else one."""
    return 2 if (cores or physical_cores()) >= 2 else 1


def threads_per_worker(workers: int, cores: Optional[int] = None) -> int:
    """Intra-op threads for each of ``workers`` concurrent engine calls: the cores split
    evenly, never fewer than one (more threads than cores only contend)."""
    return max(1, (cores or physical_cores()) // max(1, workers))


def in_order(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[tuple[T, "Future[R]"]]:
    """(item, finished future of ``fn(item)``) in the items' order, ``workers`` calls at once.

    At most 2 x ``workers`` items are submitted ahead of the one being consumed, so memory
    stays bounded on a long series. One worker runs each call inline, when it is consumed.
    A consumer that stops early (an exception, a break) cancels what has not started and
    waits for what has, so no call outlives the loop."""
    if workers <= 1:
        for item in items:
            future: Future = Future()
            try:
                future.set_result(fn(item))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, as a pool does
                future.set_exception(exc)
            yield item, future
        return
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scanside-slice") as pool:
        pending: deque = deque()
        try:
            for item in source:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                item, future = pending.popleft()
                future.exception()  # wait; the consumer asks for the result or the error
                for following in source:
                    pending.append((following, pool.submit(fn, following)))
                    break
                yield item, future
        finally:
            for _, future in pending:
                future.cancel()
