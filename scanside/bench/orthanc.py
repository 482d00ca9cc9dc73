"""A real PACS for tests and the node benchmark: Debian's Orthanc on free loopback ports with
a generated configuration, checked through its REST API (http://127.0.0.1 only)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

ORTHANC = Path("/usr/sbin/Orthanc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, folder: Path, timeout: float = 60.0) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = free_port(), free_port()
        config = {"Name": "scanside-test", "StorageDirectory": str(folder / "storage"),
                  "IndexDirectory": str(folder / "index"), "DicomAet": "ORTHANC",
                  "DicomPort": self.dicom_port, "HttpPort": self.http_port,
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
                  "DicomCheckCalledAet": False, "Plugins": [], "StorageCompression": False,
                  "HttpServerEnabled": True, "DicomServerEnabled": True}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "w")
        self.proc = subprocess.Popen([str(ORTHANC), str(folder / "orthanc.json")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.get("/system") is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"Orthanc did not start; see {folder / 'orthanc.log'}")
            time.sleep(0.1)

    @property
    def destination(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom_port}"

    def get(self, path: str) -> Optional[Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def instances(self) -> list[str]:
        return self.get("/instances") or []

    def count(self) -> int:
        return int((self.get("/statistics") or {}).get("CountInstances", 0))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.log.close()
