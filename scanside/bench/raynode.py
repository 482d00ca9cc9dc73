"""A Ray node of scanside's own, for the cluster benchmark and tests: `ray start ARGS --block`
in a session of its own, stopped by ending that session. Never `ray stop`: it stops every Ray
on the machine, a user's own included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading


def temp_dir() -> str:
    """A short folder for a node's sessions (`ray start --temp-dir`): Ray's socket paths must
    stay under 108 bytes, and out of /tmp/ray no `--ray auto` elsewhere finds this cluster."""
    return tempfile.mkdtemp(prefix="ray-", dir="/tmp")


class RayNode:
    """`ray start ARGS --block` in a process group of its own; ``stop`` ends it and all it
    started. Never `ray stop`: that stops every Ray on the machine, a user's own included."""

    def __init__(self, *args: str, env: "dict[str, str] | None" = None,
                 timeout: float = 120) -> None:
        self.lines: list[str] = []
        started = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", *args, "--block",
             "--disable-usage-stats"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, start_new_session=True)

        def read() -> None:  # also keeps the pipe drained while the node runs
            for line in self.proc.stdout:
                self.lines.append(line)
                if "Ray runtime started" in line:
                    started.set()
            started.set()

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("ray start failed:\n" + "".join(self.lines[-40:]))

    @property
    def token_auth(self) -> bool:
        return any("Token authentication is enabled" in line for line in self.lines)

    def stop(self) -> None:
        """SIGKILL to every process of the node's session (its workers are process groups of
        their own in it): a node of our own has nothing to keep, and Ray's graceful stop takes
        half a minute once a job has run."""
        for pid in self.session():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait()

    def session(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getsid(int(entry)) == self.proc.pid:
                        pids.append(int(entry))
                except OSError:
                    pass
        return pids
