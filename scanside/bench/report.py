"""Benchmark output: a terminal table, JSON, and a PNG chart of the stage breakdown.

Every result JSON is written by ``write_json``, which adds a ``provenance`` block: when
(UTC), from which scanside source (git commit and whether the checkout had uncommitted
changes, else the package version), on what (CPU model, host class, GPU), on which engine
(its manifest's source hash, precision and per-component sha256) and by which command line.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import sysconfig
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from scanside.files import atomic_path

from .machine import cpu_info, cpu_label, gpu_info

PROVENANCE_VERSION = 1

ORDER = ("dicom_read", "text", "vae_encode", "unet_step", "unet_total", "scheduler",
         "vae_decode", "dicom_write", "total")
LABELS = {"dicom_read": "DICOM read", "text": "tokenise + text encoder", "vae_encode": "VAE encode",
          "unet_step": "UNet step (each)", "unet_total": "UNet, all steps",
          "scheduler": "scheduler overhead", "vae_decode": "VAE decode",
          "dicom_write": "DICOM write", "total": "end to end"}


def table(result: dict[str, Any]) -> str:
    s, mem = result["settings"], result["memory"]
    cpu = result["machine"]["cpu"]
    lines = [
        f"scanside bench  {result['engine']}  ({result['precision']}, {result['backend']})",
        f"{s['task']} {s['size']}x{s['size']}, {s['steps']} steps ({s['unet_steps']} UNet calls), "
        f"strength {s['strength']}, guidance {s['guidance']}, {s['scheduler']}; "
        f"{s['repeat']} runs after {s['warmup']} warm-up",
        f"machine: {cpu_label(cpu)}, flags {' '.join(cpu['flags'])}",
        "",
        f"{'stage':26} {'median s':>9} {'p90 s':>9} {'min s':>9} {'GFLOP':>8} {'GFLOP/s':>8} {'of peak':>8}",
    ]
    for name in ORDER:
        st = result["stages"].get(name)
        if st is None:
            continue
        flop = f"{st['gflop']:8.1f} {st['gflops_achieved']:8.1f} {st['fraction_of_peak']:8.0%}" if "gflop" in st else ""
        lines.append(f"{LABELS[name]:26} {st['median']:9.3f} {st['p90']:9.3f} {st['min']:9.3f} {flop}")
    loop = result["stages"]["unet_total"]["median"] + result["stages"]["scheduler"]["median"]
    lines += [
        "",
        f"scheduler overhead: {result['stages']['scheduler']['median'] / loop:.2%} of the loop",
        f"peak RSS {mem['peak_rss_bytes'] / 2**30:.2f} GiB = {mem['peak_rss_over_weights']:.2f} x "
        f"engine weights ({mem['engine_weight_bytes'] / 2**30:.2f} GiB)"
        + (f"; GPU memory used {mem['gpu_used_mib']:.0f} MiB" if mem.get("gpu_used_mib") else "")
        + (f"; taken on the device {mem['device_memory_taken_bytes'] / 2**20:.0f} MiB"
           if mem.get("device_memory_taken_bytes") is not None else ""),
        f"machine peak: {result['peak']['gflops']:.1f} GFLOP/s ({result['peak']['how']})"
        + (f"; int8 {result['peak']['int8_gops']:.1f} GOP/s (u8 x s8 MatMulInteger), the "
           "peak of the int8 stages" if "int8_gops" in result["peak"] else ""),
    ]
    if result.get("peers"):
        lines += ["", peers_table(result)]
    return "\n".join(lines)


def peers_table(result: dict[str, Any]) -> str:
    ours = result["stages"]["total"]["median"]
    lines = [f"{'system':40} {'median s':>9} {'min s':>9} {'scanside speed-up':>18}",
             f"{'scanside (' + result['precision'] + ', ' + result['backend'] + ')':40} {ours:9.2f} "
             f"{result['stages']['total']['min']:9.2f} {'1.00x':>18}"]
    for peer in result["peers"]:
        if peer.get("skipped"):
            lines.append(f"{peer['name']:40} skipped: {peer['skipped']}")
            continue
        t = peer["total"]
        lines.append(f"{peer['name']:40} {t['median']:9.2f} {t['min']:9.2f} "
                     f"{t['median'] / ours:17.2f}x")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path, *, engine: "Path | str | None" = None,
               argv: Optional[Sequence[str]] = None) -> None:
    """``result`` as JSON at ``path``, with a ``provenance`` block (see ``provenance``) added
    last; the caller's dict is left as it was. ``engine``: the engine directory measured,
    where ``result["engine"]`` does not name it; ``argv``: the command line (default
    sys.argv). Call it in the process that measured: the host and the source are this one's."""
    if not isinstance(result, dict):
        raise TypeError(f"write_json: a result is a dict (got {type(result).__name__}); "
                        "put a list of runs under a key, e.g. {'runs': [...]}")
    out = {**result, "provenance": provenance(result, engine=engine, argv=argv)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


def provenance(result: "dict[str, Any] | None" = None, *, engine: "Path | str | None" = None,
               argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Where a result came from, taken now, in this process:

    - ``date_utc``: ISO 8601, UTC, to the second (when the result was written: the end of
      the run);
    - ``scanside``: ``version``, and in a git checkout ``commit`` (HEAD), ``dirty`` (a tracked
      file changed, or a new file under scanside/) and ``modified_in_package`` (the changed and
      new files under scanside/, the code that ran); outside a checkout commit and dirty are
      None;
    - ``host``: CPU model, vendor/family/model numbers, host class (the matrix unit its
      kernels reach; scanside.runtime.host), usable cores, Python; ``gpu``: nvidia-smi's GPUs
      or None;
    - ``engine``: the measured engine directory's manifest: ``source_hash`` (the checkpoint
      it was exported from), precision, per-component file and sha256 (None where the result
      names no engine directory); ``model_hash``: the result's own, if it has one;
    - ``command``: the command line, paths inside the checkout made relative to it.
    """
    result = result or {}
    cpu = cpu_info()
    return {
        "version": PROVENANCE_VERSION,
        "reconstructed": False,
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scanside": source_revision(),
        "host": {"cpu_model": cpu.get("model"), "cpu_id": cpu.get("id"),
                 "host_class": cpu.get("host_class"), "usable_cores": cpu.get("usable_cores"),
                 "python": sys.version.split()[0]},
        "gpu": gpu_info(),
        "engine": engine_identity(engine if engine is not None else result.get("engine")),
        "model_hash": result.get("model_hash"),
        "command": command_line(sys.argv if argv is None else argv),
    }


@functools.lru_cache(maxsize=1)
def checkout_root() -> Optional[Path]:
    """The git checkout this scanside package is imported from, or None (an installed wheel,
    a copy without .git, or no git). Asked of git once per process: one result JSON names
    many paths."""
    package = Path(__file__).resolve().parents[1]  # .../scanside
    try:
        top = _git(package.parent, "rev-parse", "--show-toplevel")
    except (OSError, subprocess.SubprocessError):
        return None
    root = Path(top)
    init = root / "scanside" / "__init__.py"
    try:
        return root if init.is_file() and init.samefile(package / "__init__.py") else None
    except OSError:
        return None


def source_revision() -> dict[str, Any]:
    from scanside import __version__

    root = checkout_root()
    if root is not None:
        try:
            head = _git(root, "rev-parse", "HEAD")
            tracked, untracked = [], []
            for line in _git(root, "status", "--porcelain", "--untracked-files=all").splitlines():
                path = line[3:].split(" -> ")[-1].strip('"')
                (untracked if line.startswith("??") else tracked).append(path)
            # Dirty: a tracked file changed, or a new file in the package (code that ran);
            # new files elsewhere (results being written, say) do not count.
            package = [p for p in tracked + untracked if p.startswith("scanside/")]
            return {"version": __version__, "commit": head,
                    "dirty": bool(tracked or package), "modified_in_package": sorted(set(package)),
                    "from": "git checkout"}
        except (OSError, subprocess.SubprocessError):
            pass
    return {"version": __version__, "commit": None, "dirty": None, "modified_in_package": None,
            "from": "package version (not run from a git checkout)"}


def _git(where: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.strip()


def engine_identity(engine: "Path | str | None") -> Optional[dict[str, Any]]:
    """An engine directory by its manifest: source hash, precision, component hashes."""
    from scanside.runtime.artifacts import engine_folder

    if engine is None:
        return None
    folder = engine_folder(engine)  # a model folder's engine/ too
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"path": portable_path(folder), "manifest": None}
    components = manifest.get("components") or {}
    return {"path": portable_path(folder), "source_hash": manifest.get("source_hash"),
            "precision": manifest.get("precision"),
            "format_version": manifest.get("format_version"),
            "components": {name: {"file": c.get("file"), "sha256": c.get("sha256")}
                           for name, c in components.items() if isinstance(c, dict)},
            "sha256_from": "the manifest (recorded at export)"}


def portable_path(path: "Path | str") -> str:
    """A path as it reads on another machine: relative to the scanside checkout when inside
    it, ``<site-packages>/...`` inside the interpreter's packages, ``~/...`` under the home
    directory, else as given."""
    p = Path(path)
    try:
        resolved = p.resolve()
    except OSError:
        return str(path)
    anchors = []
    root = checkout_root()
    if root is not None:
        anchors.append((root, None))
    for key in ("purelib", "platlib"):
        anchors.append((Path(sysconfig.get_paths()[key]).resolve(), "<site-packages>"))
    anchors.append((Path.home().resolve(), "~"))
    for anchor, label in anchors:
        try:
            rest = resolved.relative_to(anchor).as_posix()
        except ValueError:
            continue
        return rest if label is None else f"{label}/{rest}"
    return str(path)


def command_line(argv: Sequence[str]) -> list[str]:
    """argv with its program named as it was run (``scanside``, ``python -m MODULE``, ``python
    bench/experiments/X.py``) and the checkout's paths relative to it."""
    if not argv:
        return []
    program = Path(argv[0])
    package = Path(__file__).resolve().parents[1]
    try:
        inside = program.resolve().relative_to(package.parent)
    except (OSError, ValueError):
        inside = None
    if inside is not None and inside.parts[0] == "scanside" and inside.suffix == ".py":
        module = ".".join(inside.with_suffix("").parts)
        head = ["python", "-m", module.removesuffix(".__main__")]
    elif program.suffix == ".py":
        head = ["python", portable_path(program)]
    else:
        head = [program.name]
    return head + [portable_path(a) if os.sep in a and os.path.exists(a) else a for a in argv[1:]]


def results_dir(root: "Path | None" = None) -> Path:
    """Where a result measured now, on this host, belongs: ``bench/results/<UTC date>-<host
    class>/`` in the checkout (``root``; default: this package's checkout, else the current
    directory)."""
    base = root if root is not None else (checkout_root() or Path.cwd())
    date = datetime.now(timezone.utc).date().isoformat()
    return Path(base) / "bench" / "results" / f"{date}-{cpu_info()['host_class']}"


def plot(result: dict[str, Any], path: Path) -> None:
    """Horizontal stacked bar of where one end-to-end run's median time goes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [(LABELS[n], result["stages"][n]["median"]) for n in
             ("dicom_read", "text", "vae_encode", "unet_total", "scheduler", "vae_decode", "dicom_write")
             if n in result["stages"]]
    fig, ax = plt.subplots(figsize=(9, 2.2))
    left = 0.0
    for label, seconds in parts:
        ax.barh([0], [seconds], left=left, label=f"{label} {seconds:.2f} s")
        left += seconds
    s = result["settings"]
    ax.set_title(f"scanside {s['task']} {s['size']}px, {s['unet_steps']} UNet steps "
                 f"({result['precision']}, {result['backend']}): {result['stages']['total']['median']:.2f} s")
    ax.set_xlabel("seconds (medians)")
    ax.set_yticks([])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, fontsize=8, frameon=False)
    with atomic_path(Path(path), overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
