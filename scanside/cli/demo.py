"""`scanside demo`: the built-in model end to end (scanside.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """`scanside demo` on the subcommand parser ``sub``."""
    p = sub.add_parser("demo", help="the built-in low-dose CT model on simulated and real CT, end to end")
    p.add_argument("--workdir", type=Path, default=Path("scanside-demo"),
                   help="where the model, engine and images go (default ./scanside-demo)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from scanside.demo import run_demo

    run_demo(args.workdir)
    return 0
