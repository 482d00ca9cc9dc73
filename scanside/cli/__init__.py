"""The ``scanside`` command: one module per command group, each owning its parser and handler
(export, enhance/generate, node: serve/watch/status, info, bench, demo, models).

The only place exceptions become exit codes: 0 success, 1 a failure inside scanside, 2 bad
input (the message says which and how to fix it), 3 the output could not be written (disk
full, read-only; what was finished is kept). Library errors name the Python parameter
("max_tile: ..."); here they are told in the flag's name ("--max-tile: ...").
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Callable, Optional, Sequence

from scanside import __version__
from scanside.errors import ScansideError

from . import bench, demo, enhance, export, info, models, node, segment

log = logging.getLogger("scanside")
# Packages only the export side needs: their absence is a missing extra, not a bug.
EXPORT_PACKAGES = {"torch", "diffusers", "transformers", "onnx", "onnxscript", "safetensors"}
# Maps, SEG, SR (highdicom) and lesion candidates' regions (scipy): the annotate extra.
ANNOTATE_PACKAGES = {"highdicom", "scipy"}
COMMANDS = (export, enhance, segment, node, info, bench, demo, models)  # in the order --help lists them
# Library parameter -> the flag a command-line user gave it.
FLAGS = {"out_dir": "--out", "consistency_px": "--consistency", "noise_factor": "--noise-factor",
         "max_tile": "--max-tile", "vae_tile": "--vae-tile", "negative_prompt": "--negative-prompt",
         "strength": "--strength", "steps": "--steps", "guidance": "--guidance", "seed": "--seed",
         "scheduler": "--scheduler", "ensemble": "--ensemble", "prompt": "--prompt",
         "window": "--window", "spool": "--spool", "engine_dir": "--engine",
         "calibration": "--calibration", "precision": "--precision",
         "component_precision": "--component-precision", "attention": "--attention",
         "tiny_vae": "--tiny-vae", "trt_compat": "--trt-compat", "opset": "--opset",
         "tiny_vae_parts": "--tiny-vae-parts", "device": "--device", "address": "--ray",
         "holdout": "--holdout", "lr": "--lr", "tensorrt": "--tensorrt/--trtexec-script",
         "repeat": "--repeat", "http": "--http", "token_file": "--http-token-file"}


# Names of scanside/cli.py (until 0.1.0) that are not the command modules' own functions.
MOVED = {"enhance_images": "scanside.batch.enhance_images (paths, pipeline, out, sampling)",
         "output_for": "scanside.batch.image_target",
         "sampling_of": "scanside.cli.options.sampling_of (it returns a scanside.Sampling now)"}


def __getattr__(name: str) -> object:
    """scanside.cli was one module until 0.1.0; its helpers now live in the command modules.
    An ImportError, so that `from scanside.cli import NAME` shows where NAME went."""
    from . import options

    where = MOVED.get(name)
    for module in (options, *COMMANDS):
        found = getattr(module, name, None)
        if where is None and getattr(found, "__module__", None) == module.__name__:
            where = f"{module.__name__}.{name}"
    if where is not None:
        raise ImportError(f"scanside.cli.{name} moved to {where}; import it from there")
    raise AttributeError(f"module 'scanside.cli' has no attribute {name!r}")


def as_flags(message: str) -> str:
    """A library message that opens with a parameter's name ("out_dir: ...", "out_dir URI:
    ..."), opened with its flag instead."""
    name = re.match(r"[a-z_]+(?=[: ])", message)
    if name is None or name.group() not in FLAGS:
        return message
    return FLAGS[name.group()] + message[name.end():]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanside",
        description="Diffusion enhancement of medical images on the scanner PC or a Jetson: "
                    "export Stable Diffusion checkpoints to ONNX, run them without torch, read "
                    "and write DICOM, benchmark. Not a medical device.")
    parser.add_argument("--version", action="version", version=f"scanside {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # pydicom's log records quote element values, which may identify a patient.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ScansideError as exc:
        print(f"scanside {args.command}: error: {as_flags(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except ImportError as exc:
        if exc.name in ANNOTATE_PACKAGES:
            print(f"scanside {args.command}: error: {exc.name} is not installed; maps, "
                  "segmentation and annotation write DICOM SEG, SR and Parametric Maps with "
                  "it: pip install 'scanside[annotate]'", file=sys.stderr)
            return 2
        if exc.name not in EXPORT_PACKAGES:
            raise
        print(f"scanside {args.command}: error: {exc.name} is not installed; this command "
              "needs the export extra: pip install 'scanside[export]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no partial output was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
