"""The node's web page (``scanside serve --http HOST:PORT``): an overview of what it
received, enhanced and sent, a slice viewer per series, ``/healthz`` and ``/metrics``.

Served by uvicorn (Starlette) in a thread of the node's own process, from the same journal
(read-only) and spool. The pages show patient images, so: bound to loopback they need no
login; bound to any other address the node refuses to start without a token
(``--http-token-file``) and TLS (``--tls-cert``/``--tls-key``, the DICOM port's pair). Patient
name, ID and birth date are shown only with ``--http-show-patient``. Nothing on the page
changes the spool or the journal (docs/node.md).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from scanside.errors import InputError

log = logging.getLogger(__name__)
MIN_TOKEN = 16  # characters: a token anyone could guess protects nothing
INSTALL = "the web page needs the [node] extra: pip install 'scanside[node]'"


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    token: Optional[str] = None  # read from --http-token-file
    tls_cert: Optional[Path] = None
    tls_key: Optional[Path] = None
    show_patient: bool = False
    min_free_mb: float = 1024.0  # /healthz: unhealthy below this much free spool space

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(text: str) -> tuple[str, int]:
    """``--http`` as HOST:PORT, [IPv6]:PORT or a bare PORT (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise InputError(f"http: {text!r}: write an IPv6 address in brackets, e.g. [::1]:8080")
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535 or (sep and not host):
        raise InputError(f"http: {text!r} is not HOST:PORT or PORT (e.g. 8080, "
                         "127.0.0.1:8080, 0.0.0.0:8443)")
    return host, int(port)


def read_token(token_file: Path) -> str:
    """The bearer token: the file's first line, at least MIN_TOKEN characters; a file others
    may read is refused (the token is a password)."""
    try:
        info = token_file.stat()
        token = token_file.read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise InputError(f"token_file: {token_file} cannot be read ({reason}); give a file "
                         "holding the token on its first line") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"token_file: {token_file} may be read by others (mode "
                         f"{stat.S_IMODE(info.st_mode):o}); chmod 600 {token_file}")
    if not token or len(token[0].strip()) < MIN_TOKEN:
        raise InputError(f"token_file: {token_file} holds no token of {MIN_TOKEN} characters "
                         "or more; write one, e.g. `python -c 'import secrets; "
                         f"print(secrets.token_urlsafe(32))' > {token_file}`")
    return token[0].strip()


def check_access(settings: HttpSettings) -> None:
    """Refuse a page reachable from other hosts without a token and TLS."""
    if settings.loopback:
        return
    missing = [name for name, value in (("--http-token-file", settings.token),
                                        ("--tls-cert and --tls-key", settings.tls_cert))
               if value is None]
    if missing:
        raise InputError(f"http: {settings.host} is not a loopback address, and the page shows "
                         f"patient images: it needs {' and '.join(missing)} (or bind it to "
                         "127.0.0.1 and reach it through an SSH tunnel)")


class WebServer:
    """uvicorn in a thread of the node's process, on a socket bound before it starts (so a
    port in use is an error at start, not a log line in a thread)."""

    def __init__(self, app: Any, settings: HttpSettings) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((settings.host, settings.port))
        except OSError as exc:
            self.socket.close()
            raise InputError(f"http: cannot listen on {settings.host}:{settings.port} "
                             f"({exc.strerror}); choose another address or port") from None
        self.port = self.socket.getsockname()[1]
        tls = {}
        if settings.tls_cert is not None:
            tls = {"ssl_certfile": os.fspath(settings.tls_cert),
                   "ssl_keyfile": os.fspath(settings.tls_key) if settings.tls_key else None}
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                server_header=False, **tls)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="scanside-http", daemon=True)
        self.url = f"{settings.scheme}://{settings.host}:{self.port}/"

    def start(self, timeout: float = 15.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise InputError(f"http: the web server did not start on {self.url} (see the "
                                 "log above)")
            time.sleep(0.02)
        log.warning("scanside node web page on %s", self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


def start_web(node: Any, settings: HttpSettings) -> WebServer:
    """The page for a started ``node``: its metrics hooked to the node, the server running."""
    check_access(settings)
    try:
        from .app import make_app
    except ImportError as exc:
        raise InputError(f"http: {INSTALL} ({exc.name} is missing)") from None
    server = WebServer(make_app(node, settings), settings)
    server.start()
    return server
