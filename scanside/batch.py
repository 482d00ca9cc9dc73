"""The batch shape every input type shares: items go through one worker function, a bad item
becomes a line in the Report and the batch goes on, an output that cannot be written stops it.

DICOM series run through it in scanside.dicom.series; PNG and NPY images here.
"""

from __future__ import annotations

import logging
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from scanside.errors import InputError, OutputError
from scanside.files import read_image, refuse_existing, write_image
from scanside.runtime.parallel import in_order
from scanside.runtime.sampling import Sampling

log = logging.getLogger(__name__)


@dataclass
class Report:
    written: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # finished by an earlier run
    images: int = 0
    seconds: float = 0.0
    # Per output with counts (an enhanced instance's maps: flagged area, mean uncertainty; a
    # segmented series: flagged pixels, candidates), named by file and the tail of its
    # series folder, never by a patient attribute.
    counts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def absorb(self, other: "Report") -> None:
        """Add ``other``'s files and images (one item's report, in the batch's order)."""
        self.written += other.written
        self.failures += other.failures
        self.skipped += other.skipped
        self.images += other.images
        self.counts += other.counts


@contextmanager
def one_file(path: Path, report: Report) -> Iterator[None]:
    """A problem of the file at ``path`` goes into ``report`` and the batch goes on; an
    output that cannot be written, an interrupt or exhausted memory stop it."""
    try:
        yield
    except InputError as exc:
        report.failures.append((path, str(exc)))
    except (OutputError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - one file's bug must not end the batch
        # Where it happened, not the message: a message may quote a value.
        log.info("internal error on %s: %s at\n%s", path, type(exc).__name__,
                 "".join(traceback.format_tb(exc.__traceback__)))
        report.failures.append((path, (
            f"{path}: internal error ({type(exc).__name__}) while processing it; please report "
            "it to scanside with `-v` output")))


def image_target(source: Path, out: Path, single: bool) -> Path:
    """Where an enhanced PNG/NPY goes: ``out`` itself for one image named .png/.npy, else
    SOURCE-STEM_enhanced.SUFFIX inside the folder ``out``."""
    if single and out.suffix.lower() in (".png", ".npy"):
        return out
    return out / f"{source.stem}_enhanced{source.suffix.lower()}"


def enhance_images(paths: list[Path], pipeline, out: Path, sampling: Optional[Sampling] = None,
                   *, overwrite: bool = False, workers: int = 1,
                   progress: Optional[bool] = None, single: Optional[bool] = None,
                   on_output: Optional[Callable[[Path], None]] = None) -> Report:
    """Enhance PNG/NPY images, ``workers`` at once, each into ``image_target``; the same
    bit depth as its source (PNG) or float32 (NPY). ``out``: a folder, or for one image a
    .png/.npy file, where ``single`` (default: one path) says the batch is one image. Nothing
    is written over an input or, without ``overwrite``, a file.
    ``on_output(path)`` is called for each written file, in the inputs' order."""
    out = Path(out)
    sampling = Sampling.of(sampling)
    single = len(paths) == 1 if single is None else single
    if paths and not (single and out.suffix.lower() in (".png", ".npy")):
        out.mkdir(parents=True, exist_ok=True)
    show = workers == 1 if progress is None else progress

    def one(source: Path) -> Report:
        report = Report()
        with one_file(source, report):
            target = image_target(source, out, single)
            if target.resolve() == source.resolve():
                raise InputError(f"{target}: output would replace the input; choose another "
                                 "output folder")
            refuse_existing(target, overwrite)
            image = read_image(source)
            result = pipeline.enhance(image, sampling, progress=show)
            write_image(target, result, image.dtype, overwrite=overwrite)
            report.written.append(target)
            report.images += 1
        return report

    report = Report()
    started = time.perf_counter()
    for _, outcome in in_order(one, paths, workers):
        done = outcome.result()
        report.absorb(done)
        for target in done.written if on_output is not None else ():
            on_output(target)
    report.seconds = time.perf_counter() - started
    return report
