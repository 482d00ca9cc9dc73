"""The node in front of a real PACS (Orthanc), killed with SIGKILL at 20 seeded random points
during receive, enhance and send, restarted each time: at the end the PACS holds exactly one
derived instance per source instance, in one derived series per source series."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.dicom.conftest import partial_files

from .conftest import STORESCU, ct_series, status, storescu, wait_for

STAGES = ("receive", "enhance", "send")


def journal_counts(spool: Path) -> tuple[int, int, int]:
    """(instances received, instances enhanced, sends done) straight from the journal."""
    try:
        db = sqlite3.connect(f"file:{spool / 'journal.sqlite'}?mode=ro", uri=True, timeout=1)
        try:
            received = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
            enhanced = db.execute("SELECT COUNT(*) FROM instances WHERE state='enhanced'").fetchone()[0]
            sent = db.execute("SELECT COUNT(*) FROM sends WHERE state='sent'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0, 0, 0
    return received, enhanced, sent


@pytest.mark.slow
def test_twenty_kills_lose_nothing_and_duplicate_nothing(node_factory, orthanc, tmp_path):
    rng = random.Random(2026)
    spool = tmp_path / "spool"
    destination = [f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"]
    node, port = node_factory(spool, destination)
    everything, landed = [], []
    for round_ in range(20):
        # Each round a new 6-slice series; the kill waits for a seeded stage to begin, then
        # a seeded fraction of a second more: inside receiving, enhancing or sending.
        sources = ct_series(tmp_path / f"series{round_:02d}", 6, size=128)
        everything += sources
        stage = rng.choice(STAGES)
        before = journal_counts(spool)
        sender = subprocess.Popen([str(STORESCU), "-aet", "MODALITY", "-aec", "SCANSIDE",
                                   "127.0.0.1", str(port), *map(str, sources)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        index = STAGES.index(stage)
        try:
            wait_for(lambda: journal_counts(spool)[index] > before[index], 30, stage)
        except AssertionError:
            pass  # the stage passed between two looks: the kill lands in a later one
        time.sleep(rng.uniform(0.0, 0.3))
        node.kill()
        node.wait()
        sender.wait(timeout=120)
        after = journal_counts(spool)
        landed.append((stage, tuple(a - b for a, b in zip(after, before))))
        node, port = node_factory(spool, destination, port=port)
    # A modality re-sends what was not acknowledged; here: every series once more.
    assert storescu(port, everything).returncode == 0
    expected = {destination[0]: {"sent": len(everything)}}
    wait_for(lambda: status(spool)["sends"] == expected, 300, "every derived instance sent")
    wait_for(lambda: len(orthanc.instances()) >= len(everything), 60, "Orthanc to hold them")
    assert len(orthanc.instances()) == len(everything)  # none missing, none duplicated
    assert len(orthanc.get("/series")) == 20  # one derived series per source series
    for instance in orthanc.instances():
        tags = orthanc.get(f"/instances/{instance}/simplified-tags")
        assert tags["ImageType"].startswith("DERIVED") and tags["SeriesNumber"] == "1007"
    assert not partial_files(spool)
    # Where the kills landed, from what each round's journal gained before its kill: part
    # of the series received, received but not all enhanced, enhanced but not all sent.
    mid_receive = sum(r < 6 for _, (r, e, s) in landed)
    mid_enhance = sum(e < r for _, (r, e, s) in landed)
    mid_send = sum(s < e for _, (r, e, s) in landed)
    print(f"kills: {dict((s, [x for x, _ in landed].count(s)) for s in STAGES)} targeted; "
          f"journal after them: {mid_receive} mid-series receive, {mid_enhance} with received "
          f"instances not enhanced, {mid_send} with sends outstanding")
    assert mid_receive >= 1 and mid_enhance >= 1 and mid_send >= 1
