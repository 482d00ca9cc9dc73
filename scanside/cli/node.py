"""`scanside serve`, `watch` and `status`: the DICOM node beside the scanner."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Iterator

from scanside.errors import InputError

from .options import (add_node_options, add_sampling, load_for_slices, load_segmenter, sampling_of,
                      window_of)


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """`scanside serve`, `watch` and `status` on the subcommand parser ``sub``."""
    p = sub.add_parser("serve", help="DICOM node: receive series (C-STORE), enhance each "
                                      "complete series, forward the results to PACS")
    p.add_argument("--spool", required=True, type=Path,
                   help="folder for received and derived instances and the journal (created 0700)")
    p.add_argument("--forward", action="append", required=True, metavar="AET@HOST:PORT",
                   help="destination of the derived series (repeatable)")
    add_node_options(p)
    p.add_argument("--ae-title", default="SCANSIDE", help="this node's AE title")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=11112)
    p.add_argument("--allow", action="append", metavar="AET[@HOST]",
                   help="only these senders (repeatable); others are rejected at association")
    p.add_argument("--tls-cert", type=Path, help="TLS certificate for incoming associations")
    p.add_argument("--tls-key", type=Path, help="its private key")
    p.add_argument("--tls-ca", type=Path, help="CA whose client certificates are required")
    add_web_options(p, "the DICOM port's pair")
    add_sampling(p, guidance=1.0, strength=True)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("watch", help="enhance DICOM files dropped in a folder, once complete")
    p.add_argument("in_dir", type=Path, help="the folder files are dropped in (never modified)")
    p.add_argument("--out", required=True, type=Path, help="where derived series are written")
    p.add_argument("--spool", required=True, type=Path,
                   help="folder for the journal and copies of taken files (created 0700)")
    p.add_argument("--forward", action="append", metavar="AET@HOST:PORT",
                   help="also send the derived series here (repeatable)")
    p.add_argument("--stable", type=float, default=2.0, metavar="S",
                   help="a file is complete when its size and time are unchanged for S seconds")
    add_node_options(p)
    web = add_web_options(p, "for the page only: watch mode has no DICOM port")
    web.add_argument("--tls-cert", type=Path, help="TLS certificate of the web page")
    web.add_argument("--tls-key", type=Path, help="its private key")
    add_sampling(p, guidance=1.0, strength=True)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", help="a node's queue, backlog and last errors, from its journal")
    p.add_argument("--spool", required=True, type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)


def add_web_options(p: argparse.ArgumentParser, tls: str) -> "argparse._ArgumentGroup":
    """--http and its access flags (docs/node.md#the-web-page); ``tls``: what --tls-cert and
    --tls-key are on this command."""
    web = p.add_argument_group("web page (docs/node.md#the-web-page)")
    web.add_argument("--http", metavar="HOST:PORT",
                     help="serve the node's page, /healthz and /metrics here (a bare PORT: "
                          "127.0.0.1); any address but loopback needs --http-token-file and "
                          f"--tls-cert/--tls-key ({tls})")
    web.add_argument("--http-token-file", type=Path, metavar="FILE",
                     help="a file (mode 600) whose first line is the token every request must "
                          "carry (Authorization: Bearer, or the login form's cookie)")
    web.add_argument("--http-show-patient", action="store_true",
                     help="show patient name, ID and birth date on the pages (off: series are "
                          "shown by modality, description, slices, arrival time and a hash)")
    web.add_argument("--http-min-free", type=float, default=1024.0, metavar="MB",
                     help="/healthz answers unhealthy below this much free spool space "
                          "(default 1024 MB)")
    return web


def node_settings(args: argparse.Namespace, **extra):
    from scanside.node import NodeSettings, Peer

    forward = [Peer.parse(text, "--forward", with_port=True) for text in args.forward or []]
    return NodeSettings(spool=args.spool, forward=forward, series_idle=args.series_idle,
                        forward_originals=args.forward_originals, window=window_of(args),
                        sampling=sampling_of(args), maps=args.maps, change_k=args.change_k,
                        annotate=args.annotate, **extra)


def run_until_signalled(step) -> None:
    """Call ``step`` twice a second until SIGTERM or SIGINT (a service manager's stop)."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        step()
        stop.wait(0.5)


def http_settings(args: argparse.Namespace):
    """The web page's settings (None without --http), refused now if the page would be
    reachable from other hosts without a token and TLS."""
    from scanside.node.web import HttpSettings, check_access, parse_address, read_token

    given = [name for name, value in (("--http-token-file", args.http_token_file),
                                      ("--http-show-patient", args.http_show_patient)) if value]
    if args.http is None:
        if given:
            raise InputError(f"{given[0]}: only with --http HOST:PORT (the web page)")
        return None
    host, port = parse_address(args.http)
    if args.tls_cert is not None and args.tls_key is None:
        raise InputError("--tls-cert: needs --tls-key, the certificate's private key")
    settings = HttpSettings(
        host=host, port=port, show_patient=args.http_show_patient,
        token=read_token(args.http_token_file) if args.http_token_file else None,
        tls_cert=args.tls_cert, tls_key=args.tls_key, min_free_mb=args.http_min_free)
    check_access(settings)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from scanside.node import Node, Peer

    allow = [Peer.parse(text, "--allow", with_port=False) for text in args.allow or []]
    settings = node_settings(args, ae_title=args.ae_title, host=args.host, port=args.port,
                             allow=allow, tls_cert=args.tls_cert, tls_key=args.tls_key,
                             tls_ca=args.tls_ca)
    web_settings = http_settings(args)  # before the engine loads: a refusal costs nothing
    pipe, workers = load_for_slices(args)
    settings.workers = workers
    node = Node(settings, pipe, load_segmenter(args))
    node.start()
    with serving(node, web_settings):
        try:
            run_until_signalled(node.step)
        finally:
            node.stop()
    return 0


@contextlib.contextmanager
def serving(node, settings) -> Iterator[None]:
    """The node's web page while the block runs (nothing without --http); a page that cannot
    start stops the node."""
    if settings is None:
        yield
        return
    from scanside.node.web import start_web

    try:
        web = start_web(node, settings)
    except BaseException:
        node.stop()
        raise
    try:
        yield
    finally:
        web.stop()


def cmd_watch(args: argparse.Namespace) -> int:
    from scanside.dicom.series import check_output_dir
    from scanside.node import Node
    from scanside.node.watch import Watcher

    if not args.in_dir.is_dir():
        raise InputError(f"IN_DIR: {args.in_dir} is not a folder")
    check_output_dir(args.out, [args.in_dir])
    for folder, name in ((args.spool, "--spool"), (args.out, "--out")):
        inside = args.in_dir.resolve() in [folder.resolve(), *folder.resolve().parents]
        if inside:
            raise InputError(f"{name}: {folder} is inside the watched folder; choose one outside")
    if args.http is None and (args.tls_cert or args.tls_key):
        raise InputError("--tls-cert/--tls-key: on watch they secure the web page: give --http "
                         "too, or leave them out")
    web_settings = http_settings(args)
    pipe, workers = load_for_slices(args)
    node = Node(node_settings(args, derived=args.out, workers=workers), pipe,
                load_segmenter(args))
    node.start(listen=False)
    watcher = Watcher(node, args.in_dir, args.stable)
    with serving(node, web_settings):
        try:
            run_until_signalled(lambda: (watcher.scan(), node.step()))
        finally:
            node.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from scanside.node import open_journal

    if not (args.spool / "journal.sqlite").is_file():
        raise InputError(f"--spool: {args.spool} holds no scanside journal; give the folder "
                         "`scanside serve --spool` uses")
    journal = open_journal(args.spool)
    try:
        summary = journal.summary()
    finally:
        journal.close()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print("instances   " + (", ".join(f"{k} {v}" for k, v in sorted(summary["instances"].items())) or "none"))
    print("series      " + (", ".join(f"{k} {v}" for k, v in sorted(summary["series"].items())) or "none"))
    for destination, states in sorted(summary["sends"].items()):
        print(f"send to {destination}: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    for item in summary["retrying"]:
        print(f"retrying    {item['file']} -> {item['destination']} ({item['attempts']} tries): {item['error']}")
    for item in summary["last_errors"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["at"]))
        print(f"{when} {item['kind']}: {item['message']}")
    return 0
