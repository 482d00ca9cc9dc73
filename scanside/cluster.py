"""An archive on a Ray cluster: ``scanside enhance PATH... --out OUT --ray [ADDRESS]``.

The driver lists the files, reads their headers and groups them into series, exactly as
``enhance_series`` does, and names every output: OUT/<derived series UID>/IM00001.dcm ...,
UIDs derived from the source and the run's fingerprint (scanside.dicom.write.derived_uid).
Ray Data then runs the slices through a pool of actors, each holding one ``Pipeline`` (the
engines load once per actor), on any node; a slice's result is the same file whichever node
writes it, so a series split across nodes is still one series with one numbering. Each write
is atomic and a slice whose output exists with its expected SOP Instance UID is skipped, so a
retried task (Ray restarts a dead actor and retries its work) or a rerun of the whole command
writes nothing twice and leaves no partial file.

OUT is a path every node sees (a shared filesystem), or a filesystem URI pyarrow or fsspec
opens (``s3://bucket/prefix``, ``gs://``, ``hdfs://`` ...; scanside.store), which each actor
opens itself. Ray is an optional extra (``pip install 'scanside[cluster]'``); nothing else in
scanside imports this module.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence

from scanside.errors import InputError
from scanside.runtime.sampling import Sampling

log = logging.getLogger(__name__)


@dataclass
class ArchiveReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    series: dict[str, dict[str, int]] = field(default_factory=dict)  # per derived series
    images: int = 0
    seconds: float = 0.0
    first_output_s: Optional[float] = None

    @property
    def ok(self) -> bool:
        return not self.failures


class EnhanceActor:
    """One Ray actor: a Pipeline loaded once, then slices one by one (a Ray Data batch)."""

    def __init__(self, engine: Optional[str], backend: str, max_tile: Optional[int],
                 window: Optional[tuple[float, float]], sampling: "Sampling",
                 fingerprint: str, overwrite: bool, threads: Optional[int], out: str) -> None:
        from scanside import Pipeline
        from scanside.dicom.series import Job, run_fingerprint
        from scanside.dicom.window import Window
        from scanside.store import Store, is_store

        self.store = Store(out) if is_store(out) else None
        self.out = out
        self.node = node_name()

        pipe = Pipeline.load(engine, backend, max_tile=max_tile, threads=threads)
        chosen = Window(window[0], window[1], "argument") if window else None
        self.job = Job(pipe, chosen, False, sampling, fingerprint, overwrite)
        # Another engine or scanside version on this node would derive other UIDs: refuse
        # its work rather than split a series.
        self.mismatch = run_fingerprint(pipe, chosen, sampling) != fingerprint

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from scanside.dicom.read import read_header
        from scanside.dicom.series import Report
        from scanside.errors import ScansideError

        statuses, reasons, frames = [], [], []
        names = []
        for path, key in zip(batch["path"], batch["target"]):
            report = Report()
            names.append(self.store.name(key) if self.store else str(Path(self.out) / key))
            if self.mismatch:
                statuses.append("failed")
                reasons.append(f"{path}: this node's engine or scanside version differs from the "
                               "driver's; install the same on every node")
                frames.append(0)
                continue
            if not Path(path).is_file():  # not "unreadable DICOM": this node has no such file
                statuses.append("failed")
                reasons.append(f"{path}: not found on node {self.node}; every node must see the "
                               "input at the path the driver gave (a shared filesystem)")
                frames.append(0)
                continue
            try:
                if self.store is not None:
                    self.job.run_into(read_header(Path(path)), self.store, key, report)
                else:
                    self.job.run(read_header(Path(path)), Path(self.out) / key, report)
                statuses.append("written" if report.written else "skipped")
                reasons.append("")
            except ScansideError as exc:  # the message names the file; the batch goes on
                statuses.append("failed")
                reasons.append(str(exc))
            frames.append(report.images)
        return {"path": list(batch["path"]), "target": names,
                "status": statuses, "reason": reasons, "frames": frames}


def node_name() -> str:
    """This Ray node, as a message names it: host name and IP address."""
    import socket

    host = socket.gethostname()
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside a Ray worker: the host name alone
        return host
    return f"{host} ({ip})" if ip != host else host


def plan(paths: Sequence[Path], fingerprint: str):
    """(tasks, header failures): one task per instance, with its output's key under OUT
    (SERIES_UID/IM00001.dcm ...)."""
    from scanside.dicom.read import collect
    from scanside.dicom.write import series_uid

    collected = collect(paths)
    tasks = []
    for series in collected.series:
        folder = series_uid(series.uid, fingerprint)
        for index, instance in enumerate(series.instances):
            tasks.append({"path": str(instance.path), "target": f"{folder}/IM{index + 1:05d}.dcm"})
    return tasks, [(str(p), reason) for p, reason in collected.failures]


def enhance_archive(paths: Sequence[Path], out_dir: "str | Path", *,
                    engine: Optional[Path] = None,
                    address: Optional[str] = None, workers: int = 2, cpus_per_worker: float = 1,
                    gpus_per_worker: float = 0, backend: str = "cpu",
                    max_tile: Optional[int] = None, window: Optional[Any] = None,
                    overwrite: bool = False, threads: Optional[int] = None,
                    report_json: Optional[Path] = None, sampling: "Optional[Sampling]" = None,
                    **settings: Any) -> ArchiveReport:
    """Enhance every image series under ``paths`` into ``out_dir`` on a Ray cluster
    (``address``: a running cluster, "auto", or None for a local one). ``out_dir``: a folder
    every node sees, or a filesystem URI (a str: ``s3://bucket/prefix`` ...). ``sampling``:
    see scanside.Sampling (keyword settings as before still work in its place)."""
    sampling = Sampling.of(sampling, **settings)
    try:
        import ray
    except ImportError:
        raise InputError("address: Ray is not installed; pip install 'scanside[cluster]'") from None
    from scanside import Pipeline
    from scanside.dicom.series import check_output_dir, run_fingerprint
    from scanside.files import folder_lock, remove_partials
    from scanside.store import Store, is_store, local_path

    # Workers run elsewhere (another node, or another working folder): every path they are
    # given is absolute, as the driver sees it.
    paths = [Path(p).absolute() for p in paths]
    engine = Path(engine).absolute() if engine is not None else None
    out = str(out_dir) if is_store(out_dir) else str(Path(local_path(str(out_dir))).absolute())
    store = Store(out) if is_store(out) else None
    if store is not None:
        store.check_writable()  # a wrong bucket or credentials stop here, before any work
    else:
        check_output_dir(Path(out), paths)
    pipe = Pipeline.load(engine, backend, max_tile=max_tile)  # for the fingerprint only
    fingerprint = run_fingerprint(pipe, window, sampling)
    if not fingerprint:
        raise InputError("noise: the run must be deterministic (no noise function) so that "
                         "every node derives the same UIDs")
    report = ArchiveReport()
    started = time.perf_counter()
    clear_partials = (store.remove_partials if store is not None
                      else partial(remove_partials, Path(out)))
    # Other runs are kept out of a local folder (its lock); this run's actors write. A store
    # has no lock: one run per prefix at a time is the user's to keep.
    with nullcontext() if store is not None else folder_lock(Path(out), "out_dir"):
        stale = clear_partials()
        if stale:
            log.warning("removed %d partial file(s) an interrupted run left", stale)
        tasks, failures = plan(paths, fingerprint)
        report.failures += failures
        if tasks:
            if not ray.is_initialized():
                from scanside.cluster_auth import connect

                connect(ray, address, log_to_driver=False,
                        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(int(cpus_per_worker) or 1)}})
            window_args = (window.center, window.width) if window is not None else None
            gpus = {"num_gpus": gpus_per_worker} if gpus_per_worker else {}
            # Ray Data restarts a dead actor and retries its tasks by default (max_restarts
            # and max_task_retries -1): writes are atomic and finished slices are skipped, so
            # a retry duplicates nothing.
            dataset = ray.data.from_items(tasks).map_batches(
                EnhanceActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=cpus_per_worker, **gpus,
                fn_constructor_kwargs=dict(engine=str(engine) if engine else None,
                                           backend=backend, max_tile=max_tile,
                                           window=window_args, sampling=sampling,
                                           fingerprint=fingerprint, overwrite=overwrite,
                                           threads=threads or int(cpus_per_worker) or 1,
                                           out=out))
            for row in dataset.iter_rows():
                if report.first_output_s is None:
                    report.first_output_s = time.perf_counter() - started
                account(report, row)
            # A worker lost mid-write (its node killed) leaves its temporary file, and Ray
            # retries the slice under another name; every task has returned now and the lock
            # is still held, so what is left is no live writer's.
            lost = clear_partials()
            if lost:
                log.warning("removed %d partial file(s) that lost workers left (their slices "
                            "were retried)", lost)
    report.seconds = time.perf_counter() - started
    if report_json is not None:
        Path(report_json).write_text(json.dumps(asdict(report), indent=1))
    return report


def account(report: ArchiveReport, row: dict[str, Any]) -> None:
    series = Path(row["target"]).parent.name
    counts = report.series.setdefault(series, {"written": 0, "skipped": 0, "failed": 0})
    counts[row["status"]] += 1
    if row["status"] == "written":
        report.written.append(row["target"])
        report.images += int(row["frames"])
    elif row["status"] == "skipped":
        report.skipped.append(row["target"])
    else:
        report.failures.append((row["path"], row["reason"]))
