"""SCANSIDE_REQUIRE_SYSTEM_TOOLS (and its former name): what turns a missing system package
from a skip into a failure."""

from __future__ import annotations

import pytest

from tests import system_tools
from tests.system_tools import required_by


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "no", "No", "off", "", " "])
def test_zero_false_no_and_empty_do_not_require(value):
    assert required_by({"SCANSIDE_REQUIRE_SYSTEM_TOOLS": value}) is False
    assert required_by({"SCANSIDE_REQUIRE_DICOM_TOOLS": value}) is False  # the former name


@pytest.mark.parametrize("value", ["1", "yes", "YES", "true", "True", "on"])
def test_one_and_yes_require(value):
    assert required_by({"SCANSIDE_REQUIRE_SYSTEM_TOOLS": value}) is True
    assert required_by({"SCANSIDE_REQUIRE_DICOM_TOOLS": value}) is True


def test_unset_does_not_require_and_the_new_name_wins_over_the_old():
    assert required_by({}) is False
    assert required_by({"SCANSIDE_REQUIRE_SYSTEM_TOOLS": "0",
                        "SCANSIDE_REQUIRE_DICOM_TOOLS": "1"}) is False
    assert required_by({"SCANSIDE_REQUIRE_SYSTEM_TOOLS": "1",
                        "SCANSIDE_REQUIRE_DICOM_TOOLS": "0"}) is True


def test_another_value_is_refused_by_name():
    with pytest.raises(pytest.UsageError, match="SCANSIDE_REQUIRE_SYSTEM_TOOLS='maybe'"):
        required_by({"SCANSIDE_REQUIRE_SYSTEM_TOOLS": "maybe"})


def test_a_missing_package_skips_naming_the_apt_line_or_fails_where_required(monkeypatch):
    monkeypatch.setitem(system_tools.PACKAGES, "dcmtk", lambda: ["/usr/bin/storescu"])
    monkeypatch.setattr(system_tools, "_required", (False, "SCANSIDE_REQUIRE_SYSTEM_TOOLS"))
    with pytest.raises(pytest.skip.Exception) as skipped:
        system_tools.require("dcmtk")
    assert "needs Debian's dcmtk (apt-get install dcmtk)" in str(skipped.value)
    assert "/usr/bin/storescu" in str(skipped.value)
    monkeypatch.setattr(system_tools, "_required", (True, "SCANSIDE_REQUIRE_DICOM_TOOLS"))
    with pytest.raises(pytest.fail.Exception, match="apt-get install dcmtk.*DICOM_TOOLS is set"):
        system_tools.require("dcmtk")
    monkeypatch.setitem(system_tools.PACKAGES, "dcmtk", lambda: [])
    system_tools.require("dcmtk")  # installed: neither


def test_ci_requires_every_package_the_tests_use():
    from pathlib import Path

    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert "export SCANSIDE_REQUIRE_SYSTEM_TOOLS=1" in ci
    install = next(line for line in ci.splitlines() if line.startswith("apt-get install"))
    assert set(system_tools.PACKAGES) <= set(install.split())
