"""The node's Prometheus metrics (``GET /metrics`` of ``scanside serve --http``).

Counters and gauges are read from the journal at each scrape, so they are the journal's own
figures (``scanside status`` shows the same) and survive a restart; the two histograms are
observed by the running node: per-slice enhancement time (the engine's work on one slice,
maps included, reading and writing apart) and series latency (last slice received to last
derived file sent to every destination; with no destination, to the end of its enhancement).
Each node has its own registry: nothing of one node leaks into another's scrape.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .journal import Journal

# Per-slice time: from a 128² slice on a GPU to a 1024² slice with maps on a 2-core CPU.
SLICE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Series latency includes --series-idle (30 s by default): up to a long series on a CPU.
SERIES_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class JournalCollector(Collector):
    """The journal's totals as counters and gauges, read when Prometheus scrapes."""

    def __init__(self, journal: Journal, spool: Path) -> None:
        self.journal, self.spool = journal, spool

    def collect(self) -> Iterator[Any]:
        c = self.journal.counters()
        for name, key, text in (
                ("received", "received", "instances received (distinct SOP Instance UIDs)"),
                ("enhanced", "enhanced", "instances enhanced"),
                ("failed", "failed", "instances that could not be enhanced"),
                ("refused", "refused", "instances refused at receipt (C-STORE status C000)")):
            family = CounterMetricFamily(f"scanside_instances_{name}", text)
            family.add_metric([], c[key])
            yield family
        sent = CounterMetricFamily("scanside_sends", "derived files sent, per destination",
                                   labels=["destination"])
        retried = CounterMetricFamily("scanside_send_retries",
                                      "sends that failed and were tried again, per destination",
                                      labels=["destination"])
        backlog = GaugeMetricFamily("scanside_backlog_files",
                                    "derived files waiting to be sent, per destination",
                                    labels=["destination"])
        for destination, figures in sorted(c["sends"].items()):
            sent.add_metric([destination], figures["sent"])
            retried.add_metric([destination], figures["retries"])
            backlog.add_metric([destination], figures["pending"])
        yield from (sent, retried, backlog)
        yield GaugeMetricFamily("scanside_series_waiting",
                                "series receiving or waiting to be enhanced",
                                value=c["series_waiting"])
        yield GaugeMetricFamily("scanside_spool_free_bytes",
                                "free space on the spool's file system",
                                value=shutil.disk_usage(self.spool).free)


class Metrics:
    """One node's registry: the journal's figures and the two histograms."""

    def __init__(self, journal: Journal, spool: Path) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(JournalCollector(journal, spool))
        self.slice_seconds = Histogram(
            "scanside_slice_enhance_seconds", "engine time per enhanced slice (maps included; "
            "reading and writing apart)", buckets=SLICE_BUCKETS, registry=self.registry)
        self.series_latency = Histogram(
            "scanside_series_latency_seconds", "last slice received to last derived file sent",
            buckets=SERIES_BUCKETS, registry=self.registry)
