"""Make the kit that carries what the GPU machine lacks, in loads that fit one call each.

    python bench/gpu/prepare.py [--kit .gpu-kit] [--margin-mib 4]

The GPU machine (bench/gpu/README.md) has torch, onnx, onnxscript, scikit-image and the CPU
onnxruntime, but not onnxruntime-gpu, pydicom, the diffusers/transformers pair scanside's
export is pinned to, or onnxconverter-common. Each device call carries at most 64 MiB with the
working tree, so this downloads those wheels (Python 3.12, manylinux x86-64), splits them into
parts of what is left after the tree, packs the parts into ``KIT/load-NN/`` folders of at most
that size each, and writes ``KIT/calls.md``: the calls to make, back to back.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What the GPU machine lacks (its image: /work/.library/device/KINDS.md), pinned to what the
# export stage is tested with here. tokenizers: the image's 0.23.2 is above transformers 4.57's
# bound, which it checks at import.
WHEELS = ("onnxruntime-gpu==1.31.1", "pydicom==3.0.2", "diffusers==0.36.0",
          "transformers==4.57.6", "huggingface-hub==0.36.2", "tokenizers==0.22.1",
          "onnxconverter-common==1.16.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")
LIMIT = 64 * 2**20  # bytes one call carries, the working tree included
MIB = 2**20


def tree_bytes() -> int:
    """What travels with every call: tracked files and untracked ones git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / n.decode()).stat().st_size for n in names
               if n and (REPO / n.decode()).is_file())


def fetch(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    subprocess.run(args + list(WHEELS), check=True)
    return sorted(folder.glob("*.whl"))


def split(wheel: Path, parts: Path, size: int) -> list[Path]:
    """WHEEL.partNN of ``size`` bytes and WHEEL.sha256 (what run.sh joins and checks)."""
    data = wheel.read_bytes()
    (parts / f"{wheel.name}.sha256").write_text(
        f"{hashlib.sha256(data).hexdigest()}  {wheel.name}\n")
    out = []
    for i in range(math.ceil(len(data) / size)):
        part = parts / f"{wheel.name}.part{i + 1:02d}"
        part.write_bytes(data[i * size:(i + 1) * size])
        out.append(part)
    return out


def pack(files: list[Path], budget: int) -> list[list[Path]]:
    """First fit, largest first: loads of at most ``budget`` bytes."""
    loads: list[list[Path]] = []
    room: list[int] = []
    for f in sorted(files, key=lambda p: -p.stat().st_size):
        size = f.stat().st_size
        for i, left in enumerate(room):
            if size <= left:
                loads[i].append(f)
                room[i] -= size
                break
        else:
            loads.append([f])
            room.append(budget - size)
    return loads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kit", type=Path, default=REPO / ".gpu-kit")
    parser.add_argument("--margin-mib", type=float, default=4.0,
                        help="room left in each call for the tree growing meanwhile")
    args = parser.parse_args()
    tree = tree_bytes()
    budget = int(LIMIT - tree - args.margin_mib * MIB)
    if budget < 8 * MIB:
        raise SystemExit(f"the working tree is {tree / MIB:.1f} MiB: under 8 MiB is left per "
                         "call for the kit; carry less or ignore untracked files")
    if args.kit.exists():
        shutil.rmtree(args.kit)
    wheels = fetch(args.kit / "wheels")
    staging = args.kit / "staging"
    staging.mkdir()
    files = []
    for wheel in wheels:
        files += split(wheel, staging, budget)
        files.append(staging / f"{wheel.name}.sha256")
    loads = pack(files, budget)
    for n, load in enumerate(loads, 1):
        folder = args.kit / f"load-{n:02d}"
        folder.mkdir()
        for f in load:
            f.rename(folder / f.name)
    shutil.rmtree(staging)
    shutil.rmtree(args.kit / "wheels")
    calls = [f"# {len(loads)} calls, back to back (the machine is kept only while calls follow "
             f"within 30 s). Tree {tree / MIB:.1f} MiB, at most {budget / MIB:.1f} MiB carried "
             "per call.", ""]
    for n in range(1, len(loads) + 1):
        load = f".gpu-kit/load-{n:02d}"
        last = n == len(loads)
        command = f"mkdir -p /tmp/parts && cp {load}/* /tmp/parts/"
        command += " && bash bench/gpu/run.sh" if last else " && ls /tmp/parts | wc -l"
        calls.append(f"{n}. run(carry=[\"{load}\"], timeout_s={590 if last else 60}, "
                     f"command=\"{command}\")")
    (args.kit / "calls.md").write_text("\n".join(calls) + "\n")
    print("\n".join(calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
