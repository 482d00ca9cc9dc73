"""A whole CT series through ``enhance_series``: the throughput a scanner PC sees.

Writes ``count`` slices of ``size`` x ``size`` CT (a smooth body-like HU image with 40 HU of
noise, one series, Synthetic Data = YES) to a temporary folder, then times the batch that
``scanside enhance FOLDER`` runs: header scan, per-slice read, enhancement with the model's
own settings, derived write. Reports slices per second and the wall time per slice.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from scanside.runtime.engines import GpuOptions
from scanside.runtime.sampling import Sampling

from .harness import test_image


def write_series(folder: Path, count: int, size: int, pixel_mm: float = 0.5) -> list[Path]:
    from pydicom.uid import generate_uid

    from scanside.dicom.synthetic import simulated_ct
    from scanside.dicom.write import save

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    body = test_image(size, 0) * 200 - 60  # soft tissue, -60..140 HU
    paths = []
    for i in range(count):
        hu = body + 40 * rng.standard_normal((size, size)).astype(np.float32)
        ds = simulated_ct(hu, "scanside bench: synthetic series", pixel_mm)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber, ds.ImagePositionPatient = i + 1, [0.0, 0.0, float(i)]
        path = folder / f"slice{i:04d}.dcm"
        save(ds, path)
        paths.append(path)
    return paths


def run_series(engine_dir: Optional[Path], count: int = 100, size: int = 512,
               threads: Optional[int] = None, workers: Optional[int] = None,
               sampling: Optional[Sampling] = None, backend: str = "cpu",
               gpu: Optional[GpuOptions] = None, **settings: Any) -> dict[str, Any]:
    """``workers`` slices at once (default: as ``scanside enhance``), each engine call on
    ``threads`` (default: the cores split between the workers), on ``backend`` with ``gpu``
    (scanside.runtime.engines.GpuOptions)."""
    from scanside import Pipeline
    from scanside.dicom import enhance_series
    from scanside.runtime.parallel import default_workers, threads_per_worker

    from . import machine

    sampling = Sampling.of(sampling, **settings)
    workers = workers or default_workers()
    threads = threads or threads_per_worker(workers)
    pipe = Pipeline.load(engine_dir, backend, threads=threads, gpu=gpu or GpuOptions())
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in"
        source.mkdir()
        write_series(source, count, size)
        pipe.enhance(test_image(size, 1), sampling)  # warm-up: ORT allocates its arena
        started = time.perf_counter()
        report = enhance_series([source], pipe, Path(tmp) / "out", progress=False,
                                workers=workers, sampling=sampling)
        seconds = time.perf_counter() - started
    if report.failures:
        raise RuntimeError(f"bench series: {report.failures[0][0]}: {report.failures[0][1]}")
    return {"slices": count, "size": size, "seconds": seconds,
            "slices_per_second": count / seconds, "seconds_per_slice": seconds / count,
            "workers": workers, "threads_per_worker": threads, "backend": pipe.backend.value,
            "engine": str(pipe.engine_dir), "precision": pipe.manifest.precision.value,
            "sampling": pipe.sampling_defaults(**sampling.given()), "machine": machine.describe()}
