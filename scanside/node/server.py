"""The DICOM node: a Storage SCP beside the scanner that enhances each complete series and
sends the derived series on to the PACS (``scanside serve``).

Receive: every instance is written to SPOOL/incoming/<series>/<SOP UID>.dcm (atomically,
fsynced) and journaled before the C-STORE response says Success; an instance scanside cannot
read (not an image, truncated, an encoding with no decoder) is refused with status C000 and a
journal entry, and the rest of its series goes on. Enhance: a series is complete when nothing
arrived for ``series_idle`` seconds; it goes through ``enhance_series`` into SPOOL/derived/
(deterministic UIDs, resumable). Send: each derived file to each destination by C-STORE,
retried with backoff. On restart everything continues from the journal; a send repeated after
a crash carries the same SOP Instance UID, which a PACS stores once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pydicom
from pydicom.uid import UID

from scanside.batch import Report
from scanside.dicom import enhance_series
from scanside.runtime.maps import CHANGE_K
from scanside.dicom.read import read_header
from scanside.dicom.window import Window
from scanside.dicom.write import write_bytes
from scanside.errors import InputError, OutputError
from scanside.files import folder_lock, remove_partials
from scanside.runtime.sampling import Sampling

from .journal import Journal, Send, open_journal

log = logging.getLogger(__name__)
UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
# Storage SOP classes scanside reads: CT, MR, CR, DX (presentation and processing), Enhanced
# CT/MR (frame by frame), Secondary Capture single- and multi-frame grayscale.
STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3")
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)  # stored, with a warning


# The acceptor's order decides among a context's proposed syntaxes (pynetdicom picks the first
# of ours the sender proposed). A sender proposes its file's own encoding with uncompressed
# fallbacks; taking the encoding it has spares it a conversion it may not be able to make
# (dcmtk's storescu cannot decode RLE or JPEG 2000 to send them uncompressed). So, as dcmtk's
# storescp +xa does: compressed syntaxes first, lossless before lossy, then uncompressed.
PREFERRED = (
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2")


def syntax_preference(syntaxes: list[str]) -> list[str]:
    """``syntaxes`` with PREFERRED first, in that order, and the rest after."""
    rank = {uid: i for i, uid in enumerate(PREFERRED)}
    return sorted(syntaxes, key=lambda uid: rank.get(str(uid), len(rank)))


@dataclass(frozen=True)
class Peer:
    """AET@HOST:PORT (a destination) or AET[@HOST] (an allowed sender)."""

    ae_title: str
    host: Optional[str] = None
    port: Optional[int] = None

    @classmethod
    def parse(cls, text: str, argument: str, with_port: bool) -> "Peer":
        aet, _, rest = text.partition("@")
        host, _, port = rest.rpartition(":") if with_port else (rest, "", "")
        if not aet or len(aet) > 16 or (with_port and not (host and port.isdigit())):
            form = "AET@HOST:PORT, e.g. PACS@10.0.0.5:104" if with_port else "AET or AET@HOST"
            raise InputError(f"{argument}: {text!r} is not {form} (AE titles have 1-16 characters)")
        return cls(aet, host or None, int(port) if with_port else None)

    @property
    def key(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def allows(self, ae_title: str, host: str) -> bool:
        return ae_title.strip() == self.ae_title and (self.host is None or self.host == host)


@dataclass
class NodeSettings:
    spool: Path
    forward: list[Peer]
    ae_title: str = "SCANSIDE"
    host: str = "0.0.0.0"
    port: int = 11112
    allow: list[Peer] = field(default_factory=list)
    series_idle: float = 30.0
    forward_originals: bool = False
    window: Optional[Window] = None
    sampling: Sampling = field(default_factory=Sampling)
    tls_cert: Optional[Path] = None
    tls_key: Optional[Path] = None
    tls_ca: Optional[Path] = None
    derived: Optional[Path] = None  # where derived series go (default SPOOL/derived)
    workers: int = 1  # slices enhanced at once (scanside.runtime.parallel)
    maps: tuple[str, ...] = ()  # runtime.maps names written beside each enhanced series
    change_k: float = CHANGE_K
    annotate: bool = False  # with a segmenter: candidates measured, an SR beside the SEG

    def __post_init__(self) -> None:
        if isinstance(self.sampling, dict):  # the settings' form before scanside.Sampling
            self.sampling = Sampling.of(**self.sampling)
        Sampling.of(self.sampling)  # a wrong type fails here, not at the first series

    @property
    def derived_dir(self) -> Path:
        return self.derived or self.spool / "derived"


class TimedEnhancer:
    """A pipeline whose every slice's enhancement is timed into ``observe`` (its other
    attributes pass through unchanged)."""

    def __init__(self, pipeline: Any, observe: Callable[[float], None]) -> None:
        self.pipeline, self.observe = pipeline, observe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)

    def enhance(self, *args: Any, **kwargs: Any) -> Any:
        return self.timed(self.pipeline.enhance, args, kwargs)

    def enhance_maps(self, *args: Any, **kwargs: Any) -> Any:
        return self.timed(self.pipeline.enhance_maps, args, kwargs)

    def timed(self, call: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        started = time.perf_counter()
        result = call(*args, **kwargs)
        self.observe(time.perf_counter() - started)
        return result


class Node:
    def __init__(self, settings: NodeSettings, pipeline: Any, segmenter: Any = None) -> None:
        """``segmenter``: a segmentation engine's pipeline, run on each complete series' received
        images after its enhancement; its SEG (and, with settings.annotate, SR) are forwarded
        with the derived series."""
        self.settings = settings
        self.pipeline = pipeline
        self.segmenter = segmenter
        # Who wants each slice's enhancement time and each finished series' latency (seconds):
        # the web page's metrics (scanside.node.web), when it runs.
        self.on_slice: list[Callable[[float], None]] = []
        self.on_series: list[Callable[[float], None]] = []
        self.enhancing: Optional[str] = None  # the series being enhanced now
        self.journal: Optional[Journal] = None
        self.ae: Any = None
        self.server: Any = None
        self.held = contextlib.ExitStack()  # the spool's lock
        self.stopping = threading.Event()
        self.sender: Optional[threading.Thread] = None

    # -- life -----------------------------------------------------------------------------
    def start(self, listen: bool = True) -> None:
        """Open the spool and the journal; ``listen``: also start the Storage SCP."""
        spool = self.settings.spool
        spool.mkdir(parents=True, exist_ok=True)
        os.chmod(spool, 0o700)  # patient data: only the node's user
        (spool / "incoming").mkdir(exist_ok=True)
        self.settings.derived_dir.mkdir(parents=True, exist_ok=True)
        # One node per spool, held for the node's life; then what a kill left half-written
        # in the spool can go (the derived folder's are removed by enhance_series).
        self.held.enter_context(folder_lock(spool, "spool"))
        stale = remove_partials(spool / "incoming")
        if stale:
            log.warning("removed %d partial file(s) an interrupted run left in the spool", stale)
        self.journal = open_journal(spool)
        if listen:
            self.listen()
        # Sending runs beside enhancement: a derived file goes to the PACS as soon as it is
        # written, so the PACS's own storage time overlaps the rest of the series.
        self.sender = threading.Thread(target=self.send_loop, name="scanside-forward", daemon=True)
        self.sender.start()

    def listen(self) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
        from pynetdicom.sop_class import Verification

        spool = self.settings.spool
        ae = AE(ae_title=self.settings.ae_title)
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_CLASSES:
            # Every syntax is accepted at association; one scanside cannot decode is refused
            # per instance, with a status and a journal entry, not by failing the association.
            ae.add_supported_context(sop_class, syntax_preference(ALL_TRANSFER_SYNTAXES))
        ae.maximum_pdu_size = 0  # no limit: large instances in fewer PDUs
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_REQUESTED, self.handle_requested)]
        self.ae = ae
        self.server = ae.start_server((self.settings.host, self.settings.port), block=False,
                                      evt_handlers=handlers, ssl_context=self.tls_context())
        self.port = self.server.server_address[1]
        log.warning("scanside node %s listening on %s:%d, spool %s", self.settings.ae_title,
                    self.settings.host, self.port, spool)

    def tls_context(self) -> Optional[ssl.SSLContext]:
        """TLS for incoming associations (pynetdicom's ssl_context); a CA makes client
        certificates mandatory. Not exercised by the tests yet."""
        s = self.settings
        if s.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=s.tls_ca)
        context.load_cert_chain(s.tls_cert, s.tls_key)
        if s.tls_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def stop(self) -> None:
        self.stopping.set()
        if self.sender is not None:
            self.sender.join(timeout=60)
        if self.server is not None:
            self.server.shutdown()
        if self.journal is not None:
            self.journal.close()
        self.held.close()

    def step(self) -> None:
        """Enhance the series that are complete (sending runs in its own thread)."""
        self.enhance_complete()

    def send_loop(self, interval: float = 0.2) -> None:
        while not self.stopping.is_set():
            for destination in self.settings.forward:
                try:
                    self.forward(destination)
                except Exception as exc:  # noqa: BLE001 - the sender thread must not die
                    log.warning("forwarding to %s: %s", destination.key, type(exc).__name__)
            self.stopping.wait(interval)

    # -- receiving ------------------------------------------------------------------------
    def handle_requested(self, event: Any) -> None:
        """Only allowed senders: others are rejected at association (A-ASSOCIATE-RJ,
        calling AE title not recognised)."""
        if not self.settings.allow:
            return
        aet = str(event.assoc.requestor.primitive.calling_ae_title)
        host = event.assoc.requestor.address
        if not any(peer.allows(aet, host) for peer in self.settings.allow):
            log.warning("rejected an association from %s@%s: not on --allow", aet.strip(), host)
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)

    def handle_store(self, event: Any) -> int:
        journal = self.journal
        assert journal is not None
        sop = str(event.request.AffectedSOPInstanceUID or "")
        if not UID_RE.fullmatch(sop) or len(sop) > 64:
            journal.event("refused", "an instance with an invalid SOP Instance UID")
            return CANNOT_UNDERSTAND
        try:
            series = str(event.dataset.get("SeriesInstanceUID", "") or "")
        except Exception:  # noqa: BLE001 - a dataset pynetdicom cannot decode
            series = ""
        series = series if UID_RE.fullmatch(series) and len(series) <= 64 else "unknown-series"
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception:  # noqa: BLE001 - pynetdicom could not encode what it received
            journal.event("refused", f"instance {sop}: could not be encoded for the spool")
            return CANNOT_UNDERSTAND
        return self.accept(sop, series, data)

    def accept(self, sop: str, series: str, data: bytes) -> int:
        """Spool one instance's bytes (atomic, fsynced), check that scanside can read it,
        journal it; the C-STORE status to answer."""
        journal = self.journal
        assert journal is not None
        path = self.settings.spool / "incoming" / series / f"{sop}.dcm"
        try:
            path.parent.mkdir(exist_ok=True)
            write_bytes(data, path, overwrite=True)
        except OSError as exc:
            journal.event("spool", f"cannot write {path}: {exc.strerror}")
            return OUT_OF_RESOURCES
        try:
            read_header(path)  # an image scanside can read, or refused now, per instance
        except InputError as exc:
            path.unlink(missing_ok=True)
            journal.event("refused", str(exc))
            return CANNOT_UNDERSTAND
        journal.received(sop, series, path)
        return SUCCESS

    # -- enhancing ------------------------------------------------------------------------
    def slice_done(self, seconds: float) -> None:
        for observe in self.on_slice:
            observe(seconds)

    def series_done(self, latency: Optional[float]) -> None:
        if latency is not None:
            for observe in self.on_series:
                observe(latency)

    def enhance_complete(self) -> None:
        journal = self.journal
        assert journal is not None
        for series in journal.complete_series(self.settings.series_idle):
            self.enhancing = series
            try:
                self.enhance_one(journal, series)
            except OutputError as exc:  # the spool is full: tried again on the next step
                journal.event("spool", str(exc))
                return
            finally:
                self.enhancing = None

    def enhance_one(self, journal: Journal, series: str) -> None:
        """One complete series: enhanced (and segmented) into the spool, queued to send."""
        started = time.time()
        paths = journal.instances(series)
        destinations = [d.key for d in self.settings.forward]
        report = enhance_series(paths, TimedEnhancer(self.pipeline, self.slice_done),
                                self.settings.derived_dir,
                                window=self.settings.window, progress=False,
                                on_output=lambda path: journal.queue(path, series,
                                                                     destinations),
                                names="uid",  # a series may grow, out of order
                                workers=self.settings.workers,
                                sampling=self.settings.sampling,
                                maps=self.settings.maps, change_k=self.settings.change_k)
        segmented = self.segment(paths)
        failed = {str(p): reason for p, reason in report.failures}
        for reason in failed.values():
            journal.event("enhance", reason)
        for _, reason in segmented.failures:
            journal.event("segment", reason)
        outputs = report.written + report.skipped + segmented.written + segmented.skipped
        if self.settings.forward_originals:
            outputs += [p for p in paths if str(p) not in failed]
        self.series_done(journal.enhanced(series, outputs, failed, destinations, started))
        log.info("series enhanced: %d written, %d already done, %d failed",
                 len(report.written), len(report.skipped), len(failed))

    def segment(self, paths: list[Path]) -> Report:
        """The segmentation engine over a series' received images (an empty report without
        one): the images as acquired, which is what the SEG references and what the built-in
        lesion model was trained on."""
        if self.segmenter is None:
            return Report()
        from scanside.dicom.segment import segment_series

        from scanside.runtime.default import LESION_MODEL

        builtin = LESION_MODEL in Path(self.segmenter.engine_dir).resolve().parents
        return segment_series(paths, self.segmenter, self.settings.derived_dir,
                              window=self.settings.window, annotate=self.settings.annotate,
                              progress=False, modalities=("CT",) if builtin else ())

    # -- sending --------------------------------------------------------------------------
    def forward(self, destination: Peer) -> None:
        journal = self.journal
        assert journal is not None
        due = journal.due(destination.key)
        if not due:
            return
        from pynetdicom import AE, build_context

        syntaxes: dict[str, set[str]] = {}
        for send in due:
            try:
                header = pydicom.dcmread(send.path, stop_before_pixels=True)
                syntaxes.setdefault(str(header.SOPClassUID), set()).add(
                    str(header.file_meta.TransferSyntaxUID))
            except Exception:  # noqa: BLE001 - reported when its send fails below
                continue
        ae = AE(ae_title=self.settings.ae_title)
        contexts = [build_context(UID(sop), sorted(ts)) for sop, ts in syntaxes.items()][:128]
        assoc = ae.associate(destination.host, destination.port, contexts=contexts,
                             ae_title=destination.ae_title)
        if not assoc.is_established:
            for send in due:
                journal.retry(send, f"no association with {destination.key}")
            return
        try:
            for send in due:
                self.send_one(assoc, send, destination)
        finally:
            if assoc.is_established:
                assoc.release()

    def send_one(self, assoc: Any, send: Send, destination: Peer) -> None:
        journal = self.journal
        assert journal is not None
        try:
            status = assoc.send_c_store(Path(send.path))
        except Exception as exc:  # noqa: BLE001 - whatever failed, the send is retried
            journal.retry(send, f"{type(exc).__name__} sending to {destination.key}")
            return
        code = int(status.Status) if status and "Status" in status else None
        if code == SUCCESS or code in WARNINGS:
            self.series_done(journal.sent(send))
        else:
            journal.retry(send, f"{destination.key} answered status "
                                f"{'none' if code is None else hex(code)}")
