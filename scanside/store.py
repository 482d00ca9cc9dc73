"""Outputs on a filesystem that is not a local folder: ``--out s3://bucket/prefix`` and any
other URI pyarrow or fsspec knows (``gs://``, ``abfs://``, ``hdfs://``, ``sftp://`` ...).

Used by the Ray path (scanside.cluster), where each node writes its slices straight to the
shared store. A local folder, or a ``file://`` URI, is not a Store: it keeps the local
writer's guarantees (fsync, the folder lock), which a store cannot give.

Atomic writes: on an object store (S3, GCS, Azure) an object appears whole or not at all — a
single PUT, or a multipart upload that only becomes visible when it completes — so the object
is written in place; renaming would be a second copy. On other filesystems (HDFS, SFTP, ...)
it is written as ``NAME.partial`` and moved into place, and a rerun removes stale partials.

Credentials and options come the way the filesystem library takes them: the standard
environment variables or config files on every node (AWS_ACCESS_KEY_ID ..., GOOGLE_APPLICATION_
CREDENTIALS), or query parameters pyarrow reads from the URI
(``s3://bucket/out?endpoint_override=http://minio:9000&region=eu-west-1``). Each Ray actor opens
the filesystem from the URI itself, so nothing secret travels in the task.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import IO, Any, Optional

from scanside.errors import InputError, OutputError

# Stores where an object appears whole or not at all, and where a rename is a copy.
OBJECT_STORES = {"s3", "gcs", "gs", "abfs", "abfss", "az", "azure", "adl"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(text: str) -> Optional[str]:
    """The URI scheme of ``text`` (lower case), or None for a plain path."""
    match = _SCHEME.match(str(text))
    return match.group(1).lower() if match else None


def is_store(text: Any) -> bool:
    """True if ``text`` names a store, not a local folder (``file://`` is a local folder)."""
    found = scheme(str(text)) if isinstance(text, str) else None
    return found is not None and found != "file"


def local_path(text: str) -> str:
    """A ``file://`` URI as a path (other text unchanged)."""
    if scheme(text) == "file":
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(text).path)
    return text


def open_uri(uri: str) -> tuple[Any, str, bool]:
    """(pyarrow filesystem, root path in it, whether it is an object store)."""
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise InputError(f"out_dir {redact(uri)}: writing to a URI needs pyarrow; "
                         "pip install 'scanside[cluster]'") from None
    name = scheme(uri) or ""
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except Exception as arrow_error:  # noqa: BLE001 - not a pyarrow scheme: try fsspec's
        try:
            import fsspec
        except ImportError:
            raise InputError(f"out_dir {redact(uri)}: pyarrow does not know this filesystem "
                             f"({arrow_error}) and fsspec is not installed") from None
        try:
            spec_fs, root = fsspec.core.url_to_fs(uri)
        except Exception as exc:  # noqa: BLE001 - unknown protocol, missing driver package
            raise InputError(f"out_dir {redact(uri)}: neither pyarrow nor fsspec can open it "
                             f"({type(exc).__name__}: {exc}); install the filesystem's "
                             "package (s3fs, gcsfs, adlfs, ...) or use a local folder") from None
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(spec_fs))
    return fs, root.rstrip("/"), name in OBJECT_STORES


def redact(uri: str) -> str:
    """The URI without a password or query string (they may carry secrets) for messages."""
    text = re.sub(r"//[^/@]*@", "//***@", str(uri))
    return text.split("?", 1)[0]


class Store:
    """A root on a pyarrow filesystem: keys are paths relative to it, '/'-separated."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.root, self.object_store = open_uri(uri)

    def name(self, key: str) -> str:
        """How messages name a key: the URI without secrets, then the key."""
        return f"{redact(self.uri).rstrip('/')}/{key}"

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    def exists(self, key: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(key)).type == pafs.FileType.File

    def open_input(self, key: str) -> IO[bytes]:
        return self.fs.open_input_file(self.path(key))

    def write(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` atomically (see the module's docstring)."""
        target = self.path(key)
        try:
            if self.object_store:
                with self.fs.open_output_stream(target) as out:
                    out.write(data)
                return
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            partial = f"{target}.partial"
            with self.fs.open_output_stream(partial) as out:
                out.write(data)
            self.fs.move(partial, target)
        except OSError as exc:
            raise OutputError(f"out_dir: cannot write {self.name(key)} ({exc}); check the "
                              "credentials, the bucket and the space, then run the same "
                              "command again to resume") from None

    def remove_partials(self) -> int:
        """Delete the ``.partial`` files an interrupted run left; returns how many."""
        import pyarrow.fs as pafs

        if self.object_store:
            return 0  # nothing partial is ever visible there
        found = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True,
                                                        allow_not_found=True))
        stale = [info.path for info in found
                 if info.type == pafs.FileType.File and info.path.endswith(".partial")]
        for path in stale:
            self.fs.delete_file(path)
        return len(stale)

    def check_writable(self) -> None:
        """Write and delete a probe object, so a wrong bucket or missing credentials stop the
        run before any work, with a message that says which."""
        key = f".scanside-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            if not self.object_store and self.root:
                self.fs.create_dir(self.root, recursive=True)
            with self.fs.open_output_stream(self.path(key)) as out:
                out.write(b"")
            self.fs.delete_file(self.path(key))
        except OSError as exc:
            raise InputError(f"out_dir {redact(self.uri)}: cannot be written ({exc}); check that "
                             "the bucket or folder exists and the credentials allow writing") from None
