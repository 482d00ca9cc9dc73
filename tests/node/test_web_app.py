"""The node's web page without a browser: the journal's figures, the access rules and every
route, through Starlette's test client on a node that received and enhanced a series."""

from __future__ import annotations

import logging
import re
import sqlite3
import time

import numpy as np
import pydicom
import pytest

from scanside.errors import InputError
from scanside.node import Journal
from tests.dicom.conftest import SENTINELS, assert_no_identifiers

from .conftest import ct_series

pytest.importorskip("starlette", reason="the web page needs the [node] extra")
from starlette.testclient import TestClient  # noqa: E402

from scanside.node.web import (HttpSettings, check_access, parse_address,  # noqa: E402
                               read_token)
from scanside.node.web.app import COOKIE, hide_uids, make_app  # noqa: E402

TOKEN = "s3cret-token-for-tests-only"


# -- the journal's figures ----------------------------------------------------------------
def test_a_series_is_forwarded_when_its_last_send_goes_out(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    for n in range(3):
        journal.received(f"1.2.{n}", "9.9", tmp_path / f"{n}.dcm")
    outputs = [tmp_path / f"out{n}.dcm" for n in range(3)]
    journal.queue(outputs[0], "9.9", ["A", "B"])  # sent on while the series still runs
    assert journal.enhanced("9.9", outputs, {}, ["A", "B"], time.time()) is None
    sends = journal.due("A") + journal.due("B")
    assert len(sends) == 6
    latencies = [journal.sent(send) for send in sends]
    assert latencies[:-1] == [None] * 5 and latencies[-1] is not None and latencies[-1] >= 0
    assert journal.sent(sends[-1]) is None  # once only
    figures = journal.overview(since=0)
    assert figures["series"] == {"forwarded": 1}
    assert figures["instances"] == {"forwarded": 3}
    assert figures["sends"]["A"]["sent"] == 3 and figures["sends"]["A"]["pending"] == 0
    assert journal.counters()["received"] == 3 and journal.counters()["enhanced"] == 3
    journal.received("1.2.3", "9.9", tmp_path / "3.dcm")  # a late slice reopens it
    assert journal.overview(since=0)["series"] == {"received": 1}
    journal.close()


def test_a_slice_sent_again_keeps_counters_rising_and_latency_positive(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    journal.received("1.2.1", "9.9", tmp_path / "1.dcm")
    journal.enhanced("9.9", [tmp_path / "o.dcm"], {}, ["A"], time.time())
    (send,) = journal.due("A")
    assert journal.sent(send) >= 0
    time.sleep(0.05)
    journal.received("1.2.1", "9.9", tmp_path / "1.dcm")  # the modality sends it again
    # Enhanced again to the same derived file, already sent: nothing to send, finished now.
    latency = journal.enhanced("9.9", [tmp_path / "o.dcm"], {}, ["A"], time.time())
    assert latency is not None and latency >= 0
    counters = journal.counters()
    assert (counters["received"], counters["enhanced"]) == (2, 2)  # never down
    assert journal.overview(since=0)["series"] == {"forwarded": 1}
    journal.close()


def test_a_series_whose_every_instance_failed_is_failed(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    journal.received("1.2.1", "9.9", tmp_path / "1.dcm")
    journal.enhanced("9.9", [], {str(tmp_path / "1.dcm"): "not an image"}, ["A"], time.time())
    figures = journal.overview(since=0)
    assert figures["series"] == {"failed": 1} and figures["instances"] == {"failed": 1}
    journal.close()


def test_without_destinations_a_series_finishes_when_enhanced(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    journal.received("1.2.1", "9.9", tmp_path / "1.dcm")
    journal.received("1.2.2", "9.9", tmp_path / "2.dcm")
    latency = journal.enhanced("9.9", [tmp_path / "o.dcm"], {str(tmp_path / "2.dcm"): "bad"}, [],
                               time.time())
    assert latency is not None
    counters = journal.counters()
    assert (counters["enhanced"], counters["failed"], counters["sends"]) == (1, 1, {})
    assert journal.series_files("9.9")[1] == [tmp_path / "o.dcm"]
    journal.close()


def test_a_journal_from_before_the_page_gains_its_columns(tmp_path):
    path = tmp_path / "journal.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE instances (sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL,
            path TEXT NOT NULL, received REAL NOT NULL, state TEXT NOT NULL, error TEXT);
        CREATE TABLE series (series_uid TEXT PRIMARY KEY, last_received REAL NOT NULL,
            state TEXT NOT NULL, error TEXT, started_at REAL, enhanced_at REAL);
        INSERT INTO instances VALUES ('1.2', '9.9', '/x.dcm', 1.0, 'enhanced', NULL);
        INSERT INTO series VALUES ('9.9', 1.0, 'enhanced', NULL, 1.0, 2.0);""")
    old.commit()
    old.close()
    journal = Journal(path)
    assert journal.counters()["enhanced"] == 1 and journal.counters()["received"] == 1
    assert journal.series_rows()[0]["forwarded_at"] is None
    journal.close()


def test_the_reader_cannot_write(tmp_path):
    Journal(tmp_path / "journal.sqlite").close()
    reader = Journal.reader(tmp_path)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.received("1.2", "9.9", tmp_path / "x.dcm")
    reader.close()


# -- settings and access ------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("8080", ("127.0.0.1", 8080)), ("0.0.0.0:8443", ("0.0.0.0", 8443)),
    ("[::1]:9000", ("::1", 9000)), ("localhost:0", ("localhost", 0))])
def test_http_addresses(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host:", ":80", "80000", "host:http"])
def test_bad_http_addresses_name_the_flag(text):
    with pytest.raises(InputError, match="http: .* is not HOST:PORT"):
        parse_address(text)
    with pytest.raises(InputError, match=r"IPv6 address in brackets, e.g. \[::1\]:8080"):
        parse_address("::1:80")  # not all interfaces on port 1


def test_the_token_file_must_be_private_and_long(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    with pytest.raises(InputError, match=r"may be read by others .*chmod 600"):
        read_token(path)
    path.chmod(0o600)
    assert read_token(path) == TOKEN
    path.write_text("short\n")
    with pytest.raises(InputError, match="no token of 16 characters"):
        read_token(path)
    with pytest.raises(InputError, match="cannot be read"):
        read_token(tmp_path / "missing")


def test_a_page_reachable_from_other_hosts_needs_a_token_and_tls(tmp_path):
    check_access(HttpSettings(host="127.0.0.1"))
    check_access(HttpSettings(host="::1"))
    with pytest.raises(InputError, match=r"--http-token-file and --tls-cert and --tls-key"):
        check_access(HttpSettings(host="0.0.0.0"))
    with pytest.raises(InputError, match=r"needs --tls-cert and --tls-key \(or bind"):
        check_access(HttpSettings(host="10.0.0.5", token=TOKEN))
    check_access(HttpSettings(host="10.0.0.5", token=TOKEN, tls_cert=tmp_path / "c",
                              tls_key=tmp_path / "k"))


def test_uids_are_shown_as_hashes():
    text = hide_uids("incoming/1.2.826.0.1.3680043.8.498.1/1.2.3.4.5.dcm: bad, 3.5 s, v1.2.3, "
                     "no association with PACS@10.0.0.5:104")
    assert "1.2.826" not in text and "1.2.3.4.5" not in text and "uid " in text
    # Short dotted numbers and addresses stay.
    assert text.endswith(".dcm: bad, 3.5 s, v1.2.3, no association with PACS@10.0.0.5:104")


# -- the application -------------------------------------------------------------------------
@pytest.fixture
def served(tiny_engine, tmp_path):
    """A node (not listening) that received a 3-slice CT series and enhanced it."""
    from scanside import Pipeline
    from scanside.node import Node, NodeSettings

    node = Node(NodeSettings(spool=tmp_path / "spool", forward=[], series_idle=0,
                             sampling={"steps": 2, "strength": 0.5}),
                Pipeline.load(tiny_engine))
    node.start(listen=False)
    sources = ct_series(tmp_path / "in", 3, size=32)
    for path in sources:
        ds = pydicom.dcmread(path)
        assert node.accept(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                           path.read_bytes()) == 0
    node.step()
    yield node, sources
    node.stop()


def client_for(node, **settings) -> TestClient:
    return TestClient(make_app(node, HttpSettings(**settings)), base_url="http://127.0.0.1:8080")


def test_pages_show_the_series_and_its_slices(served):
    node, sources = served
    client = client_for(node)
    overview = client.get("/overview.json").json()
    assert overview["instances"]["enhanced"] == 3 and overview["series"]["enhanced"] == 1
    (row,) = overview["series_rows"]
    assert (row["instances"], row["outputs"], row["modality"]) == (3, 3, "CT")
    key = row["key"]
    assert key in client.get("/").text
    page = client.get(f"/series/{key}")
    assert page.status_code == 200 and "3 slices" in page.text
    meta = client.get(f"/series/{key}/slices.json").json()
    assert [s["layers"] for s in meta["slices"]] == [["enhanced", "source"]] * 3
    # The layers' values are the files': slice order by position, HU, int16 on the wire.
    from scanside.dicom.read import read_header, read_values

    ordered = sorted(sources, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    got = client.get(f"/series/{key}/slice/1/source")
    assert got.headers["x-dtype"] == "int16"
    values = np.frombuffer(got.content, "<i2").reshape(int(got.headers["x-rows"]), -1)
    np.testing.assert_array_equal(values, read_values(read_header(ordered[1]))[1][0])
    assert client.get(f"/series/{key}/slice/1/enhanced").status_code == 200
    assert client.get(f"/series/{key}/slice/3/source").status_code == 404
    assert client.get(f"/series/{key}/slice/0/uncertainty").status_code == 404
    assert client.get("/series/000000000000").status_code == 404


def test_no_patient_identifier_is_served_unless_asked(served):
    node, _ = served
    client = client_for(node)
    key = client.get("/overview.json").json()["series_rows"][0]["key"]
    routes = ["/", "/overview.part", "/overview.json", f"/series/{key}",
              f"/series/{key}/slices.json", "/metrics", "/healthz", "/login"]
    for route in routes:
        answer = client.get(route)
        assert answer.status_code == 200, route
        body = answer.content.decode("utf-8", "replace")
        assert_no_identifiers(body)
        assert "SeriesInstanceUID" not in body and "1.2.826.0.1" not in body
    shown = client_for(node, show_patient=True)
    assert SENTINELS["PatientName"] in shown.get(f"/series/{key}").text
    assert SENTINELS["PatientID"] in shown.get("/").text


def test_with_a_token_every_page_needs_it(served, caplog):
    node, _ = served
    client = client_for(node, token=TOKEN)
    key = client_for(node).get("/overview.json").json()["series_rows"][0]["key"]
    routes = ["/", "/overview.part", "/overview.json", f"/series/{key}",
              f"/series/{key}/slices.json", f"/series/{key}/slice/0/source", "/metrics",
              "/healthz"]
    with caplog.at_level(logging.WARNING, logger="scanside.node.web.app"):
        for route in routes:
            refused = client.get(route)
            assert refused.status_code == 401, route
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert client.get(route, headers={"Authorization": "Bearer wrong-token-xxxxxxx"}
                              ).status_code == 401
            assert client.get(route, headers={"Authorization": f"Bearer {TOKEN}"}
                              ).status_code == 200, route
    assert sum("401 GET" in r.getMessage() for r in caplog.records) == 2 * len(routes)
    assert_no_identifiers(caplog.text)
    # A browser gets the login form (still 401); the right token sets a strict cookie.
    form = client.get("/", headers={"Accept": "text/html"})
    assert form.status_code == 401 and 'name="token"' in form.text
    assert client.post("/login", data={"token": "nope", "next": "/"},
                       follow_redirects=False).status_code == 401
    ok = client.post("/login", data={"token": TOKEN, "next": f"/series/{key}"},
                     follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == f"/series/{key}"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert cookie.startswith(f"{COOKIE}=") and TOKEN not in cookie
    assert client.get("/").status_code == 200  # the client keeps the cookie
    offsite = client.post("/login", data={"token": TOKEN, "next": "//evil.example/"},
                          follow_redirects=False)
    assert offsite.headers["location"] == "/"


def test_errors_on_the_page_name_files_by_hash(served):
    node, _ = served
    node.journal.event("refused", f"{node.settings.spool}/incoming/1.2.826.0.1.3680043.8.498.77/"
                       "1.2.826.0.1.3680043.8.498.78.dcm: not an image")
    client = client_for(node)
    (error,) = client.get("/overview.json").json()["errors"]
    assert error["message"].startswith("incoming/uid ") and "1.2.826" not in error["message"]
    assert str(node.settings.spool) not in error["message"]
    assert "1.2.826.0.1.3680043.8.498.78" not in client.get("/").text


def test_loopback_answers_its_own_names_only(served):
    """No login on loopback: a page elsewhere that rebinds its name to 127.0.0.1 is refused."""
    node, _ = served
    client = client_for(node)
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    assert client.get("/overview.json", headers={"Host": "evil.example:8080"}).status_code == 400


def test_paths_around_the_gate_are_refused(served):
    node, _ = served
    client = client_for(node, token=TOKEN)
    for route in ("/static/../overview.json", "/static/%2e%2e/overview.json", "/login/",
                  "/login/../overview.json", "/LOGIN", "//overview.json"):
        answer = client.get(route)
        assert answer.status_code in (401, 404), (route, answer.status_code)
        assert b'"instances"' not in answer.content
    assert client.get("/static/style.css").status_code == 200  # code and style pass
    huge = client.post("/login", content=b"token=" + b"x" * 10_000,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert huge.status_code == 413


def test_health_and_metrics_follow_the_journal(served):
    node, _ = served
    client = client_for(node)
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["healthy"]
    full = client_for(node, min_free_mb=1e12).get("/healthz")  # more than any disk has
    assert full.status_code == 503 and "MB free, under" in full.json()["problems"][0]
    metrics = client.get("/metrics").text
    figures = dict(re.findall(r"^(scanside_\w+?)(?:\{\})? ([\d.e+]+)$", metrics, re.M))
    counters = node.journal.counters()
    assert float(figures["scanside_instances_received_total"]) == counters["received"] == 3
    assert float(figures["scanside_instances_enhanced_total"]) == 3
    assert float(figures["scanside_instances_failed_total"]) == 0


def test_the_histograms_see_the_node(served, tmp_path):
    node, _ = served
    client = client_for(node)
    sources = ct_series(tmp_path / "second", 2, size=32)
    for path in sources:
        ds = pydicom.dcmread(path)
        node.accept(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), path.read_bytes())
    node.step()
    metrics = client.get("/metrics").text
    assert "scanside_slice_enhance_seconds_count 2.0" in metrics
    assert "scanside_series_latency_seconds_count 1.0" in metrics  # no destinations: enhanced


def test_the_page_changes_nothing_in_the_spool(served):
    node, _ = served
    spool = node.settings.spool

    def state() -> dict:
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in spool.rglob("*")
                if p.is_file() and not p.name.endswith("-shm")}

    before = state()
    client = client_for(node)
    key = client.get("/overview.json").json()["series_rows"][0]["key"]
    for route in ["/", "/overview.part", f"/series/{key}", f"/series/{key}/slices.json",
                  f"/series/{key}/slice/0/source", f"/series/{key}/slice/2/enhanced",
                  "/metrics", "/healthz"]:
        assert client.get(route).status_code == 200, route
    assert state() == before
