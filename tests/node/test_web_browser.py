"""The node's web page in a real browser: Debian's chromium, driven by selenium through
Debian's chromedriver, against ``scanside serve --http`` receiving from dcmtk's storescu.

SCANSIDE_SCREENSHOTS=DIR keeps the screenshots the test takes (docs/images/ holds the ones
docs/node.md shows: ``SCANSIDE_SCREENSHOTS=docs/images pytest tests/node/test_web_browser.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from pydicom.uid import generate_uid

from scanside.bench.orthanc import free_port
from tests import system_tools
from tests.dicom.conftest import assert_no_identifiers, ct_phantom, ct_slice

from .conftest import REPO, echo, status, storescu, wait_for

SLICES = 20
TOKEN = "browser-test-token-0123456789"


def noisy_series(folder: Path, count: int, size: int = 128) -> list[Path]:
    """A CT series of ``count`` slices: the phantom with 30 HU of noise (something to
    enhance), the test's sentinel patient attributes in every file."""
    uid, rng = generate_uid(), np.random.default_rng(0)
    folder.mkdir(parents=True)
    return [ct_slice(folder / f"s{n:03d}.dcm", ct_phantom(size, seed=n)
                     + rng.normal(0, 30, (size, size)), float(n), n + 1, uid)
            for n in range(count)]


def serve(spool: Path, http: str, *extra: str, forward: str = "",
          log: Optional[Path] = None) -> tuple[subprocess.Popen, int]:
    """``scanside serve`` with the built-in model, its page on ``http``; its output in ``log``
    (default: node.log beside the spool)."""
    port = free_port()
    args = [sys.executable, "-m", "scanside", "serve", "--spool", str(spool), "--host",
            "127.0.0.1", "--port", str(port), "--series-idle", "3", "--http", http,
            "--forward", forward or f"NOBODY@127.0.0.1:{free_port()}", *extra]
    spool.parent.mkdir(parents=True, exist_ok=True)
    output = open(log or spool.parent / "node.log", "w")
    proc = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)


def get(url: str, token: str = "", context=None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                     if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except urllib.error.URLError as error:  # not listening yet: no status
        return 0, str(error.reason).encode()


@pytest.fixture
def browser():
    system_tools.require("chromium", "chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium "
                                    "(the [test] extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    # Headless and quiet: this machine's network is closed, so no background fetches.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1500,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("SCANSIDE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


@pytest.mark.slow
def test_a_series_on_the_page_from_arrival_to_forwarded(browser, recorder, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    sources = noisy_series(tmp_path / "in", SLICES)
    web = free_port()
    spool = tmp_path / "spool"
    node, port = serve(spool, f"127.0.0.1:{web}", "--maps", "uncertainty,change",
                       forward=f"RECORDER@127.0.0.1:{recorder.port}")
    base = f"http://127.0.0.1:{web}"
    try:
        wait_for(lambda: echo(port), 120, "the node to answer")
        assert storescu(port, sources).returncode == 0
        browser.get(base + "/")
        seen = []

        def first_row(part: str) -> str:
            # Read in one script: the overview replaces its figures every 3 s, so an element
            # found a moment ago may be gone.
            return browser.execute_script(
                f"const e = document.querySelector('#series-list tr.series {part}');"
                "return e ? e.textContent.trim() : '';")

        def state() -> str:
            text = first_row(".state")
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            return text

        wait_for(lambda: state() == "forwarded", 180, "the series to be forwarded")
        # The series is idle for 3 s before enhancement starts: the page saw it waiting.
        assert seen[0] in ("received", "enhancing") and seen[-1] == "forwarded", seen
        assert first_row(".count") == str(SLICES)
        screenshot(browser, "node-overview.png")

        browser.execute_script("document.querySelector('#series-list tr.series a').click()")
        wait_for(lambda: browser.find_elements(By.ID, "viewer"), 30, "the series page")
        viewer = browser.find_element(By.ID, "viewer")
        wait_for(lambda: viewer.get_attribute("data-rendered") == "1:soft tissue", 30,
                 "the first slice drawn")
        assert browser.find_element(By.ID, "slice-count").text == f"{SLICES} slices"
        assert browser.find_element(By.ID, "slice").get_attribute("max") == str(SLICES)
        panels = [f.get_attribute("data-layer") for f in
                  browser.find_elements(By.CSS_SELECTOR, ".panel")]
        assert panels == ["source", "enhanced", "difference", "uncertainty", "change"]

        def canvas(layer: str) -> str:
            return browser.execute_script(
                f"return document.getElementById('layer-{layer}').toDataURL()")

        first = canvas("source")
        source = browser.find_element(By.ID, "layer-source")
        for _ in range(3):  # three notches of the wheel: three slices on
            ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(source), 0, 120
                                                     ).perform()
        wait_for(lambda: viewer.get_attribute("data-rendered") == "4:soft tissue", 30,
                 "the wheel to reach slice 4")
        assert canvas("source") != first  # another slice, another picture
        ActionChains(browser).move_to_element_with_offset(source, 5, 5).perform()
        hover = browser.find_element(By.ID, "hover").text
        assert re.search(r"source -?\d+(\.\d)? · enhanced -?\d+(\.\d)? · difference", hover), hover
        screenshot(browser, "node-series.png")

        soft = canvas("source")
        browser.find_element(By.CSS_SELECTOR, "button[data-preset=lung]").click()
        wait_for(lambda: viewer.get_attribute("data-rendered") == "4:lung", 30, "the lung window")
        assert canvas("source") != soft  # the preset changed the picture
        assert "C -600 W 1500" in browser.find_element(
            By.CSS_SELECTOR, ".panel[data-layer=source] figcaption").text
        browser.find_element(By.TAG_NAME, "body").send_keys("\ue010")  # End
        wait_for(lambda: viewer.get_attribute("data-rendered") == f"{SLICES}:lung", 30,
                 "End to reach the last slice")
        screenshot(browser, "node-series-lung.png")
        page = browser.page_source

        # /metrics counts what the journal holds.
        journal = status(spool)
        code, metrics = get(base + "/metrics")
        figures = dict(re.findall(r"^(scanside_[a-z_]+)(?:\{[^}]*\})? ([0-9.e+]+)$",
                                  metrics.decode(), re.M))
        assert float(figures["scanside_instances_received_total"]) == SLICES
        assert float(figures["scanside_instances_enhanced_total"]) == \
            journal["instances"]["enhanced"] == SLICES
        destination = f"RECORDER@127.0.0.1:{recorder.port}"
        assert float(figures["scanside_sends_total"]) == journal["sends"][destination]["sent"]
        assert float(figures["scanside_sends_total"]) == sum(recorder.received.values())
        assert float(figures["scanside_backlog_files"]) == 0
        assert float(figures["scanside_series_latency_seconds_count"]) == 1
        assert float(figures["scanside_slice_enhance_seconds_count"]) == SLICES

        # No byte served carries the sentinel patient attributes.
        key = browser.current_url.rsplit("/", 1)[1]
        served = [page]
        for route in ["/", "/overview.part", "/overview.json", f"/series/{key}",
                      f"/series/{key}/slices.json", "/metrics", "/healthz"]:
            served.append(get(base + route)[1].decode("utf-8", "replace"))
        for index in (0, SLICES - 1):
            for layer in ("source", "enhanced", "uncertainty", "change"):
                code, data = get(f"{base}/series/{key}/slice/{index}/{layer}")
                assert code == 200
                served.append(data.decode("latin-1"))
        for text in served:
            assert_no_identifiers(text)
        assert_no_identifiers((spool.parent / "node.log").read_text())
    finally:
        stop(node)


@pytest.mark.slow
def test_off_loopback_the_page_needs_a_token_and_tls(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    web = free_port()
    refused, _ = serve(tmp_path / "a" / "spool", f"0.0.0.0:{web}")
    assert refused.wait(timeout=120) == 2
    log = (tmp_path / "a" / "node.log").read_text()
    assert "needs --http-token-file and --tls-cert and --tls-key" in log

    if shutil.which("openssl") is None:
        pytest.skip("openssl (Debian's openssl) makes the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    node, port = serve(tmp_path / "b" / "spool", f"0.0.0.0:{web}", "--http-token-file",
                       str(token_file), "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        client = ssl.create_default_context(cafile=str(cert))
        base = f"https://127.0.0.1:{web}"
        wait_for(lambda: get(base + "/healthz", TOKEN, client)[0] == 200, 120, "the page")
        for route in ["/", "/overview.part", "/overview.json", "/series/0123456789ab",
                      "/series/0123456789ab/slices.json", "/metrics", "/healthz"]:
            assert get(base + route, context=client)[0] == 401, route
            assert get(base + route, "not-the-token-at-all", client)[0] == 401, route
        assert get(base + "/", TOKEN, client)[0] == 200
        assert get(base + "/metrics", TOKEN, client)[0] == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plain HTTP
            urllib.request.urlopen(f"http://127.0.0.1:{web}/healthz", timeout=10)
    finally:
        stop(node)
    assert "401 GET '/metrics' from 127.0.0.1" in (tmp_path / "b" / "node.log").read_text()


@pytest.mark.slow
def test_healthz_turns_unhealthy_when_the_spool_disk_is_full(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs the spool lives on needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    web = free_port()
    node = None
    try:
        node, _ = serve(disk / "spool", f"127.0.0.1:{web}", "--http-min-free", "8",
                        log=tmp_path / "node.log")
        base = f"http://127.0.0.1:{web}"
        wait_for(lambda: get(base + "/healthz")[0] == 200, 120, "a healthy node")
        with open(disk / "filler", "wb") as filler:  # the disk fills up
            try:
                while True:
                    filler.write(b"\0" * (1 << 20))
                    filler.flush()
            except OSError:
                pass
        code, body = get(base + "/healthz")
        report = json.loads(body)
        assert code == 503 and not report["healthy"], report
        assert report["checks"]["spool_free_bytes"] < 8e6
        assert "MB free, under 8 MB" in report["problems"][0]
        (disk / "filler").unlink()
        assert get(base + "/healthz")[0] == 200
    finally:
        if node is not None:
            stop(node)
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
