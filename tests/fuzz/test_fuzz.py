"""The default tier's fuzz sample: ~50 seeded cases (the dedicated run is
`python -m tests.fuzz --cases 1000`, see docs/dicom.md)."""

from __future__ import annotations

import pytest

from .run import GOOD, run_fuzz


@pytest.mark.slow
def test_a_seeded_sample_ends_written_or_refused(tiny_engine, tmp_path):
    report = run_fuzz(50, seed=2026, workdir=tmp_path, engine=tiny_engine, timeout=60, jobs=2,
                      echo=lambda line: None)
    findings = [(c.number, c.seed_file, c.description, c.outcome, c.detail)
                for c in report.findings()]
    assert not findings, findings
    counts = report.counts()
    assert sum(counts.values()) == 50 and set(counts) <= set(GOOD)
    # The sample must exercise both ends: damage scanside reads through, and damage it refuses.
    assert counts.get("written", 0) >= 5 and counts.get("refused", 0) >= 5
    assert not list((tmp_path / "cases").iterdir())  # judged cases leave nothing behind
