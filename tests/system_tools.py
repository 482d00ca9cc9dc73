"""Tests that need a Debian package besides Python's: skip where it is missing, with the
``apt-get install`` line that adds it, or fail instead where SCANSIDE_REQUIRE_SYSTEM_TOOLS
says they must run (CI sets it to 1, after installing them all; .ci/run).

The variable is read once, the first time a test asks: 1, true, yes or on (any case) mean
required; 0, false, no, off or empty mean not required (as does leaving it unset); anything
else is refused by name. SCANSIDE_REQUIRE_DICOM_TOOLS, its former name, is read the same way
where the new one is unset.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Mapping, Optional

import pytest

VARIABLE = "SCANSIDE_REQUIRE_SYSTEM_TOOLS"
ALIASES = ("SCANSIDE_REQUIRE_DICOM_TOOLS",)  # the former name: DICOM tools only
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"", "0", "false", "no", "off"})


def commands(*names: str) -> Callable[[], list[str]]:
    """A check that the commands are on PATH (or exist, for an absolute path)."""
    def missing() -> list[str]:
        return [n for n in names
                if not (Path(n).is_file() if os.path.isabs(n) else shutil.which(n))]
    return missing


def head_template() -> list[str]:
    from scanside.training.anatomy import head_template_files, head_template_present

    return [] if head_template_present() else [str(f) for f in head_template_files()
                                               if not f.is_file()]


def orthanc() -> list[str]:
    from scanside.bench.orthanc import ORTHANC

    return commands(str(ORTHANC))()


# Debian package -> what the tests use of it (its absence: the names missing).
PACKAGES: dict[str, Callable[[], list[str]]] = {
    # The Colin27 head template the training data's head scenes are made from.
    "mricron-data": head_template,
    # dcmdump and dcm2pnm read every written file back; storescu and storescp (dcmtk's own,
    # not a shim) are the node's peers.
    "dcmtk": commands("dcmdump", "dcm2pnm", "/usr/bin/storescu", "/usr/bin/storescp"),
    # dciodvfy checks every written file against the DICOM standard's IODs.
    "dicom3tools": commands("dciodvfy"),
    # The real PACS the DICOM node forwards to.
    "orthanc": orthanc,
    # A real browser for the node's web page (driven by selenium through Debian's own
    # chromedriver, the same version; nothing is downloaded at run time).
    "chromium": commands("/usr/bin/chromium"),
    "chromium-driver": commands("/usr/bin/chromedriver"),
}


def parse(name: str, value: Optional[str]) -> Optional[bool]:
    """``value`` of the variable ``name`` as a bool; None where it is unset."""
    if value is None:
        return None
    word = value.strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise pytest.UsageError(f"{name}={value!r}: give 1, true or yes (the tests that need a "
                            "system package fail where it is missing) or 0, false, no or "
                            "nothing (they skip)")


def deciding(environ: Mapping[str, str]) -> tuple[bool, str]:
    """(whether ``environ`` asks the tests that need a system package to fail where it is
    missing, the variable that says so): SCANSIDE_REQUIRE_SYSTEM_TOOLS, or where it is unset
    its former name."""
    for name in (VARIABLE, *ALIASES):
        value = parse(name, environ.get(name))
        if value is not None:
            return value, name
    return False, VARIABLE


def required_by(environ: Mapping[str, str]) -> bool:
    return deciding(environ)[0]


_required: Optional[tuple[bool, str]] = None


def required() -> bool:
    """required_by(os.environ), read once per session."""
    global _required
    if _required is None:
        _required = deciding(os.environ)
    return _required[0]


def missing(package: str) -> list[str]:
    """What of Debian's ``package`` the tests use is not here (empty: installed)."""
    return PACKAGES[package]()


def message(absent: Mapping[str, list[str]]) -> str:
    names = " ".join(absent)
    what = ", ".join(item for items in absent.values() for item in items)
    return (f"{what}: not installed; needs Debian's {' and '.join(absent)} "
            f"(apt-get install {names})")


def require(*packages: str) -> None:
    """Skip the calling test (or fixture) unless every Debian package in ``packages`` is
    installed; fail instead where SCANSIDE_REQUIRE_SYSTEM_TOOLS is set."""
    unknown = [p for p in packages if p not in PACKAGES]
    assert not unknown, f"unknown system package(s) {unknown}: add them to PACKAGES"
    absent = {p: found for p in packages if (found := missing(p))}
    if not absent:
        return
    if required():
        pytest.fail(f"{message(absent)}; {_required[1]} is set, so this fails instead of "
                    "skipping", pytrace=False)
    pytest.skip(message(absent))
