"""The web page's Starlette application: routes, the token gate, the figures it shows.

Every route reads; the only POST is the login form, which sets a cookie and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Optional

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from scanside.errors import InputError

from ..journal import Journal
from ..metrics import Metrics
from . import HttpSettings
from .spool import LAYERS, Spool, series_key

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
COOKIE = "scanside_session"
HOUR = 3600.0
# A DICOM UID in a message or a file name: shown as a short hash, as the series are.
# Five parts or more, so that an IPv4 address in a message stays readable.
UID = re.compile(r"(?<!\d)(?<!\d\.)\d+(?:\.\d+){4,}(?!\d|\.\d)")
LOGIN_BODY = 4096  # bytes: a token and a return path
# Window presets (center, width in HU) for CT; "own" is the file's WindowCenter/Width.
PRESETS = {"brain": (40, 80), "soft tissue": (40, 400), "lung": (-600, 1500),
           "bone": (400, 1800)}
HEADERS = {  # every response: no caching of patient images, no framing, scripts from here only
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def session_value(token: str) -> str:
    """The login cookie's value: derived from the token, so the token itself never sits in a
    cookie, and every cookie dies when the token file changes."""
    return hmac.new(token.encode(), b"scanside web session", hashlib.sha256).hexdigest()


class Gate:
    """ASGI middleware: the security headers on every response; with a token, every request
    without it (bearer header or login cookie) answers 401, logged with method, path and
    client only. The login form and the static files (code and style, no patient data) pass."""

    def __init__(self, app: Any, settings: HttpSettings, templates: Jinja2Templates) -> None:
        self.app, self.settings, self.templates = app, settings, templates
        self.token = settings.token
        self.session = session_value(settings.token) if settings.token else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
            await send(message)

        request = Request(scope, receive)
        path = scope["path"]
        if self.token is None or path == "/login" or path.startswith("/static/") or \
                self.allowed(request):
            await self.app(scope, receive, with_headers)
            return
        client = scope.get("client") or ("?", 0)
        log.warning("401 %s %r from %s: no valid token", scope["method"], path, client[0])
        await self.refusal(request)(scope, receive, with_headers)

    def allowed(self, request: Request) -> bool:
        assert self.token is not None and self.session is not None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(),
                                                                 self.token.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return secrets.compare_digest(cookie.encode(), self.session.encode())

    def refusal(self, request: Request) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return self.templates.TemplateResponse(
                request, "login.html", {"next": safe_next(request.url.path), "wrong": False},
                status_code=401)
        return Response("401: this node's page needs its token (Authorization: Bearer TOKEN)\n",
                        status_code=401, media_type="text/plain",
                        headers={"WWW-Authenticate": 'Bearer realm="scanside"'})


def safe_next(path: str) -> str:
    """Where the login form returns to: a path on this site only."""
    return path if path.startswith("/") and not path.startswith("//") else "/"


def make_app(node: Any, settings: HttpSettings) -> Starlette:
    """The page for a started node: a read-only journal of its own, the node's metrics."""
    spool_dir: Path = node.settings.spool
    reader = Journal.reader(spool_dir)
    spool = Spool(reader, show_patient=settings.show_patient)
    metrics = Metrics(reader, spool_dir)
    node.on_slice.append(metrics.slice_seconds.observe)
    node.on_series.append(metrics.series_latency.observe)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    engine = engine_text(node)

    # The routes are plain functions: Starlette runs them in its thread pool, so reading the
    # journal or decoding a slice never holds up the event loop (nor /healthz and /metrics).
    def overview_context() -> dict[str, Any]:
        return overview(node, reader, spool, engine)

    def index(request: Request) -> Response:
        return templates.TemplateResponse(request, "overview.html", overview_context())

    def overview_part(request: Request) -> Response:
        return templates.TemplateResponse(request, "overview_part.html", overview_context())

    def overview_json(request: Request) -> Response:
        return JSONResponse(overview_context())

    def series_page(request: Request) -> Response:
        view = spool.series(request.path_params["key"])
        if view is None:
            return Response("no such series on this node\n", 404, media_type="text/plain")
        layers = [name for name in LAYERS if any(name in s.layers for s in view.slices)]
        return templates.TemplateResponse(request, "series.html", {
            "view": view, "layers": layers, "presets": PRESETS,
            "show_patient": settings.show_patient})

    def slices_json(request: Request) -> Response:
        view = spool.series(request.path_params["key"])
        if view is None:
            return JSONResponse({"error": "no such series"}, 404)
        return JSONResponse({
            "key": view.key, "size": view.size, "window": view.window,
            "presets": PRESETS, "modality": view.modality,
            "slices": [{"layers": sorted(s.layers), "windows": s.windows} for s in view.slices]})

    def pixels(request: Request) -> Response:
        view = spool.series(request.path_params["key"])
        index, layer = request.path_params["index"], request.path_params["layer"]
        if view is None or not 0 <= index < len(view.slices) or \
                layer not in view.slices[index].layers:
            return Response("no such slice or layer\n", 404, media_type="text/plain")
        path, frame = view.slices[index].layers[layer]
        try:
            data, dtype, shape = spool.pixels(path, frame)
        except (OSError, InputError):  # gone or unreadable since it was listed
            return Response("this slice cannot be read now\n", 404, media_type="text/plain")
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Dtype": dtype, "X-Rows": str(shape[0]),
                                 "X-Columns": str(shape[1])})

    def healthz(request: Request) -> Response:
        report = health(node, reader, spool_dir, settings.min_free_mb)
        return JSONResponse(report, 200 if report["healthy"] else 503)

    def metrics_route(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def login_form(request: Request) -> Response:
        target = safe_next(request.query_params.get("next", "/"))
        return templates.TemplateResponse(request, "login.html", {"next": target, "wrong": False})

    async def login(request: Request) -> Response:
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > LOGIN_BODY:
            return Response("a login form is a token and a path\n", 413, media_type="text/plain")
        async with request.form(max_files=0, max_fields=4, max_part_size=LOGIN_BODY) as form:
            target = safe_next(str(form.get("next") or "/"))
            given = str(form.get("token") or "").strip()
        if settings.token is None:
            return RedirectResponse(target, 303)
        if not secrets.compare_digest(given.encode(), settings.token.encode()):
            client = request.client.host if request.client else "?"
            log.warning("401 POST /login from %s: wrong token", client)
            return templates.TemplateResponse(request, "login.html",
                                              {"next": target, "wrong": True}, status_code=401)
        response = RedirectResponse(target, 303)
        response.set_cookie(COOKIE, session_value(settings.token), httponly=True,
                            samesite="strict", secure=settings.tls_cert is not None, path="/")
        return response

    routes = [
        Route("/", index), Route("/overview.part", overview_part),
        Route("/overview.json", overview_json),
        Route("/series/{key:str}", series_page),
        Route("/series/{key:str}/slices.json", slices_json),
        Route("/series/{key:str}/slice/{index:int}/{layer:str}", pixels),
        Route("/healthz", healthz), Route("/metrics", metrics_route),
        Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = []
    if settings.loopback:  # no login here: refuse other names, or a web page could rebind
        # its own name to 127.0.0.1 and read this one from the user's browser
        middleware.append(Middleware(TrustedHostMiddleware,
                                     allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"]))
    app = Starlette(routes=routes, middleware=middleware)
    return Gate(app, settings, templates)  # type: ignore[return-value]


def engine_text(node: Any) -> dict[str, str]:
    """What runs: the engine and its settings, as the derived series' description says."""
    s = node.settings
    out = {"engine": node.pipeline.describe(s.sampling), "workers": str(s.workers),
           "series idle": f"{s.series_idle:g} s",
           "forward to": ", ".join(p.key for p in s.forward) or "none"}
    if s.maps:
        out["maps"] = f"{', '.join(s.maps)} (change k {s.change_k:g})"
    if node.segmenter is not None:
        out["segmentation"] = Path(node.segmenter.engine_dir).name + \
            (" with annotation" if s.annotate else "")
    return out


def overview(node: Any, reader: Journal, spool: Spool, engine: dict[str, str]) -> dict[str, Any]:
    now = time.time()
    figures = reader.overview(now - HOUR)
    enhancing = node.enhancing
    instances, series = dict(figures["instances"]), dict(figures["series"])
    rows = []
    for row in reader.series_rows(limit=50):
        state = row["state"]
        if row["series_uid"] == enhancing and state == "open":  # still open: not yet closed
            state = "enhancing"
        elif state == "open":
            state = "received"
        elif row["forwarded_at"] is not None:
            state = "forwarded"
        elif row["instances"] and row["failed"] == row["instances"]:
            state = "failed"
        about = spool.summary(row.pop("first_path"))
        uid = row.pop("series_uid")
        rows.append({**row, "key": spool.key_of(uid), "state": state,
                     "enhancing": state == "enhancing",
                     **about,
                     "arrived": clock(row["first_received"]),
                     "latency_s": (row["forwarded_at"] - row["last_received"])
                     if row["forwarded_at"] else None})
    if any(r["enhancing"] for r in rows):  # the node's own state: the journal has none
        waiting = sum(r["instances"] - r["enhanced"] - r["failed"] for r in rows
                      if r["enhancing"])
        instances["enhancing"] = waiting
        instances["received"] = max(0, instances.get("received", 0) - waiting)
        series["enhancing"] = 1
        series["received"] = max(0, series.get("received", 0) - 1)
    latencies = figures["last_hour"]["series_latency_s"]
    errors = [{"when": clock(e["at"]), "kind": e["kind"], "message": hide_uids(e["message"].replace(
        f"{node.settings.spool}{os.sep}", ""))} for e in reader.last_events()]
    retrying = [{**r, "file": hide_uids(r["file"]), "error": hide_uids(r["error"] or "")}
                for r in reader.retrying(limit=5)]
    return {
        "instances": {k: instances.get(k, 0) for k in
                      ("received", "enhancing", "enhanced", "failed", "forwarded")},
        "series": {k: series.get(k, 0) for k in
                   ("received", "enhancing", "enhanced", "failed", "forwarded")},
        "sends": figures["sends"], "retrying": retrying, "errors": errors,
        "last_hour": {
            "slices enhanced": figures["last_hour"]["enhanced"],
            "slices failed": figures["last_hour"]["failed"],
            "files sent": sum(d["sent_since"] for d in figures["sends"].values()),
            "series finished": len(latencies),
            "series latency, median": seconds(statistics.median(latencies) if latencies else None),
            "series latency, longest": seconds(max(latencies) if latencies else None)},
        "engine": engine, "series_rows": rows, "now": clock(now),
    }


def health(node: Any, reader: Journal, spool: Path, min_free_mb: float) -> dict[str, Any]:
    """Process up (this answer), the journal readable and writable, the forwarding thread
    alive, free spool space above ``min_free_mb``. Reads only: the checks write nothing."""
    problems = []
    try:
        reader.counters()
        readable = True
    except Exception as exc:  # noqa: BLE001 - any failure to read is the answer
        readable = False
        problems.append(f"journal unreadable ({type(exc).__name__})")
    journal = spool / "journal.sqlite"
    writable = os.access(journal, os.W_OK) and os.access(spool, os.W_OK) and \
        not os.statvfs(spool).f_flag & os.ST_RDONLY
    if not writable:
        problems.append("journal not writable")
    free = shutil.disk_usage(spool).free
    if free < min_free_mb * 1e6:
        problems.append(f"spool has {free / 1e6:.0f} MB free, under {min_free_mb:g} MB")
    sender = node.sender is not None and node.sender.is_alive()
    if node.settings.forward and not sender:
        problems.append("the forwarding thread is not running")
    return {"healthy": not problems, "problems": problems,
            "checks": {"process": "up", "journal_readable": readable,
                       "journal_writable": writable, "spool_free_bytes": free,
                       "spool_min_free_bytes": int(min_free_mb * 1e6), "sender_alive": sender}}


def hide_uids(text: str) -> str:
    return UID.sub(lambda m: "uid " + hashlib.sha256(m.group().encode()).hexdigest()[:8], text)


def clock(at: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else ""


def seconds(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.1f} s"


__all__ = ["make_app", "series_key"]
