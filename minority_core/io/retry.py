"""Retrying storage calls: which errors a retry can fix, backoff, and the likely fix for the rest.

Object stores and networks fail briefly (timeouts, throttling, 5xx); disks and credentials fail
for good (full, read-only, denied). Only the first kind is retried, so a permanent error reaches
the user at once, named with its fix instead of after a useless backoff.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from typing import TypeVar

from minority_core.errors import InputError, StorageError
from minority_core.errors import one_line as _one_line

T = TypeVar("T")

_PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
# OS errors that no retry fixes: a full disk, a read-only file system, a denied or too-long path
_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.EFBIG}
_TRANSIENT_NAME_HINTS = ("Connect", "Timeout", "HTTPClient", "IncompleteRead", "ResponseParser", "Throttl")
_TRANSIENT_S3_CODES = {"SlowDown", "Throttling", "RequestTimeout", "InternalError", "ServiceUnavailable", "503", "500"}


def is_transient(err: BaseException) -> bool:
    """Worth retrying: network/timeouts/5xx, not missing files, permissions or our own errors."""
    if isinstance(err, (StorageError, *_PERMANENT)):
        return False
    if isinstance(err, OSError) and err.errno in _PERMANENT_ERRNOS:
        return False
    if isinstance(err, (ConnectionError, TimeoutError, OSError)):
        return True
    module = type(err).__module__ or ""
    if module.startswith(("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google")):
        if any(h in type(err).__name__ for h in _TRANSIENT_NAME_HINTS):
            return True
        code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
        return code in _TRANSIENT_S3_CODES
    return False


def retry(
    fn: Callable[[], T],
    what: str,
    attempts: int = 4,
    base_delay: float = 0.2,
    max_delay: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn`, retrying transient storage errors with jittered exponential backoff.

    Permanent errors propagate unchanged at once; after `attempts` transient failures a
    StorageError names `what` (an operation and URL) and the last error.
    """
    if attempts < 1:
        raise InputError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:
            if not is_transient(err):
                raise
            if attempt == attempts - 1:
                raise StorageError(f"{what}: gave up after {attempts} attempts ({_one_line(err)}){storage_hint(err)}") from err
            delay = min(max_delay, base_delay * 2**attempt) * (0.5 + random.random() / 2)
            sleep(delay)
    raise AssertionError("unreachable")


def storage_hint(err: BaseException) -> str:
    """The likely fix for a storage error, as a `; ...` suffix (empty when we have no idea)."""
    name = type(err).__name__
    text = str(err).lower()
    if isinstance(err, FileNotFoundError) and "bucket" in text:
        return "; the bucket does not exist: create it or fix the URL"
    if isinstance(err, FileNotFoundError):
        return "; a parent directory or bucket is missing: create it or fix the URL"
    if isinstance(err, PermissionError) or "accessdenied" in text.replace(" ", ""):
        return "; permission denied: check credentials (--storage-option key=..., env) and write access"
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        return "; a component of the path is a file, not a directory: choose another output path"
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "; the disk is full (or over quota): free space or choose another output location"
    if isinstance(err, OSError) and err.errno == errno.EROFS:
        return "; the file system is read-only: choose another output location"
    if "Credential" in name:
        return "; no usable credentials: set them in the environment or via --storage-option"
    if isinstance(err, ConnectionError) or "Connect" in name or "connect" in text:
        return "; cannot reach the storage endpoint: check endpoint_url and the network"
    if isinstance(err, TimeoutError) or "Timeout" in name:
        return "; storage timed out: check the network or raise the retry budget"
    return ""
