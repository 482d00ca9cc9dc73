"""Running the peers: find or build their environment, run peers.py there, read its JSON.

The peers need torch, diffusers and optimum-onnx, which a device's scanside install lacks.
If this interpreter has them, it runs the peers; otherwise a virtual environment is built
once from requirements-peers.txt under ~/.cache/scanside/ (keyed by that file's hash).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-peers.txt"
RUNNER = HERE / "peers.py"
PEER_MODULES = ("torch", "diffusers", "optimum.onnxruntime")


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scanside"


def has_peer_modules(python: Path) -> bool:
    probe = "import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m.split('.')[0]) for m in %r) else 1)" % (PEER_MODULES,)
    try:
        return subprocess.run([str(python), "-c", probe], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def build_env() -> Path:
    """A venv with the pinned peers; rebuilt when requirements-peers.txt changes."""
    stamp = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    root = cache_dir() / f"peers-{stamp}"
    python = root / "bin" / "python"
    if (root / ".complete").is_file() and python.is_file():
        return python
    log.warning("building the peer environment in %s (once)", root)
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    (root / ".complete").write_text(stamp)
    return python


def peer_python(explicit: Optional[Path]) -> Path:
    if explicit is not None:
        return explicit
    if has_peer_modules(Path(sys.executable)):
        return Path(sys.executable)
    return build_env()


def run_peers(model_dir: Path, model_hash: str, settings: dict[str, Any],
              python: Optional[Path] = None, timeout_s: int = 3600) -> list[dict[str, Any]]:
    """Each peer's end-to-end timing, or a 'skipped' entry that says why."""
    try:
        exe = peer_python(python)
    except (OSError, subprocess.CalledProcessError) as exc:
        return [{"name": "peers", "skipped": f"could not build the peer environment ({exc}); "
                 f"install {REQUIREMENTS} by hand and pass --peers-python"}]
    if not has_peer_modules(exe):
        return [{"name": "peers", "skipped": f"{exe} lacks {', '.join(PEER_MODULES)}; "
                 f"pip install -r {REQUIREMENTS} there, or drop --peers-python to let scanside build it"}]
    optimum_dir = cache_dir() / "optimum" / model_hash[:16]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peers.json"
        argv = [str(exe), str(RUNNER), "--model", str(model_dir), "--optimum-dir", str(optimum_dir),
                "--task", settings["task"], "--size", str(settings["size"]),
                "--steps", str(settings["steps"]), "--strength", str(settings["strength"]),
                "--guidance", str(settings["guidance"]), "--repeat", str(settings["repeat"]),
                "--warmup", str(settings["warmup"]), "--json", str(out)]
        log_file = cache_dir() / "peers.log"  # their libraries' warnings, kept off the terminal
        log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(log_file, "w") as err:
                subprocess.run(argv, check=True, timeout=timeout_s, stdout=err, stderr=err)
        except (OSError, subprocess.SubprocessError) as exc:
            return [{"name": "peers", "skipped": f"the peer runner failed ({exc}); see {log_file}"}]
        return json.loads(out.read_text())
