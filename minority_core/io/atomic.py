"""The one atomic writer: readers see a file whole or not at all, on any fsspec filesystem.

Locally the bytes go to a hidden temporary sibling, are fsynced and renamed over the target
(rename is atomic on POSIX). On object stores (s3, gs, memory) an object appears only once its
PUT or multipart upload completes, so bytes are one `pipe_file`; a streamed writer goes to a
local temporary file first and is uploaded with one `put_file`. Every write reports the size
and sha256 of what it stored, which is what manifests and reference sets record.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Callable
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

TMP_MARK = ".tmp-"  # in the name of every temporary sibling: `clean_temporaries` finds them by it

Writer = Callable[[BinaryIO], Any]


class _HashingWriter:
    """A write-only file wrapper that counts and hashes bytes on their way through."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.size += len(view)
        return self.raw.write(view)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes | Writer) -> dict[str, Any]:
    """Make `path` hold exactly `data` (bytes, or a callable that writes to a binary file), never
    visible half-written; returns `{"bytes": size, "sha256": hex}` of what was stored. Leaves no
    temporary behind when it fails."""
    if is_local(fs):
        return _write_local(fs, path, data)
    if isinstance(data, bytes | bytearray | memoryview):
        payload = bytes(data)
        fs.pipe_file(path, payload)
        return {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    scratch = os.path.join(tempfile.gettempdir(), f"minority-upload-{uuid.uuid4().hex}")
    return _write_then(scratch, data, lambda: fs.put_file(scratch, path))


def _write_local(fs: fsspec.AbstractFileSystem, path: str, data: bytes | Writer) -> dict[str, Any]:
    parent, name = posixpath.split(path)
    fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".{name}{TMP_MARK}{uuid.uuid4().hex}")
    return _write_then(tmp, data, lambda: os.replace(tmp, path))


def _write_then(scratch: str, data: bytes | Writer, publish: Callable[[], Any]) -> dict[str, Any]:
    """Write `scratch`, then `publish` it (rename or upload); the scratch file never outlives the call."""
    try:
        stats = _write_file(scratch, data)
        publish()
        return stats
    finally:
        _unlink_quietly(scratch)


def _write_file(name: str, data: bytes | Writer) -> dict[str, Any]:
    """Write a fresh local file (never an existing one), fsync it, return its size and sha256."""
    with open(name, "xb") as f:
        out = _HashingWriter(f)
        if callable(data):
            data(out)
        else:
            out.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": out.size, "sha256": out.sha256.hexdigest()}


def _unlink_quietly(name: str) -> None:
    """Remove a temporary if it is there; never raise, so the error that made us clean up (say a
    read-only or full file system, where even unlinking a missing name fails) is the one reported."""
    try:
        os.unlink(name)
    except OSError:
        pass
