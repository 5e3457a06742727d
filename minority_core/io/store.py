"""`ShardStore`: shards and the manifest under one fsspec URL (a local path, s3://, gs://, memory://).

Every write goes through `write_atomic`, so a reader (or a resumed run) sees a shard whole or
not at all; every storage call is retried on transient errors, and every failure surfaces as
one line naming the URL and the likely fix.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from minority_core.errors import CorruptShardError, InputError, MissingFileError, StorageError
from minority_core.errors import one_line as _one_line
from minority_core.io import commit_log
from minority_core.io.atomic import TMP_MARK, is_local, write_atomic
from minority_core.io.manifest import MANIFEST_NAME, Manifest, ShardRecord, sha256_hex, shard_relpath, validate_kind
from minority_core.io.retry import retry, storage_hint
from minority_core.io.schema import conform_samples, parquet_bytes, upgrade_samples

T = TypeVar("T")

_SHARD_FILE = re.compile(r"shard-(\d{5,})\.parquet")
RUN_ENTRIES = ("commits", "samples", "features", "scores", "selections", "report")  # what `clear()` removes besides the manifest


class ShardStore:
    """Shards and manifest under one fsspec URL; safe to use from many processes at once.

    Each writer writes only its own shards; commits go to the run's commit log
    (io/commit_log.py), whose commits cost the same whatever the run's size.
    The store pickles by URL and options (never by its filesystem object), so it can be
    shipped to Ray actors. Its repr never shows storage options (credentials).
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        retries: int = 4,
        retry_delay: float = 0.2,
    ) -> None:
        if not isinstance(url, str) or not url.strip():
            raise InputError(f"storage URL must be a non-empty string, got {url!r}")
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.retries = retries
        self.retry_delay = retry_delay
        fs, root = fsspec.core.url_to_fs(url, **self.storage_options)
        self.fs: fsspec.AbstractFileSystem = fs
        self.local = is_local(fs)
        self.root = self._normalise_root(root)
        self.lease: Any = None  # the writer's Lease (minority_core/io/lease.py) where it took one; never pickled

    def _normalise_root(self, root: str) -> str:
        """Root path without trailing '/'; a bucket-less object-store URL is refused."""
        stripped = root.rstrip("/")
        if stripped:
            return stripped
        if self.local or "memory" in _protocols(self.fs):
            return ""  # filesystem root: joined paths start with "/"
        raise InputError(f"storage URL {self.url!r} names no bucket or container")

    def __repr__(self) -> str:
        return f"ShardStore({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options, "retries": self.retries, "retry_delay": self.retry_delay}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["url"], state["storage_options"], retries=state["retries"], retry_delay=state["retry_delay"]
        )

    # ----- paths

    def _abs(self, rel: str) -> str:
        """Filesystem path of `rel`, refusing anything that would resolve outside the root."""
        if rel.startswith("/") or "\\" in rel:
            raise InputError(f"path {rel!r} must be relative to the output root")
        full = f"{self.root}/{rel}"
        norm = posixpath.normpath(full)
        if norm != full or not norm.startswith(self.root + "/"):
            raise InputError(f"path {rel!r} resolves outside the output root {self.url}")
        return full

    def shard_path(self, kind: str, index: int) -> str:
        """Filesystem path of a shard (what `self.fs` takes; a local OS path for local roots)."""
        return self._abs(shard_relpath(kind, index))

    def url_of(self, rel: str) -> str:
        """Full URL (with protocol) of a path relative to the root: for messages and readers."""
        return self.fs.unstrip_protocol(self._abs(rel))

    def shard_url(self, kind: str, index: int) -> str:
        """Full URL of a shard, e.g. for `datasets.load_dataset(..., storage_options=...)`."""
        return self.url_of(shard_relpath(kind, index))

    # ----- low-level I/O

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return retry(fn, what, attempts=self.retries, base_delay=self.retry_delay)

    def _invalidate(self, path: str) -> None:
        """s3fs/gcsfs cache listings: drop them so exists()/ls() see what was just written."""
        try:
            self.fs.invalidate_cache(path)
        except Exception:
            pass

    def _put_atomic(self, rel: str, data: bytes) -> dict[str, Any]:
        """Make `rel` hold exactly `data`, never visible half-written; returns `{"bytes", "sha256"}`
        of what was stored. Errors are one line naming the URL and the likely fix."""
        path = self._abs(rel)
        what = f"write {self.url_of(rel)}"
        try:
            return self._retry(lambda: write_atomic(self.fs, path, data), what)
        except StorageError:
            raise
        except OSError as err:
            raise StorageError(f"{what}: {_one_line(err)}{storage_hint(err)}") from err
        finally:
            self._invalidate(path)

    def _remove_quietly(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except Exception:
            pass

    def _get(self, rel: str) -> bytes:
        """Bytes of `rel`; FileNotFoundError (naming the URL) if it is not there."""
        path = self._abs(rel)
        url = self.url_of(rel)
        try:
            return self._retry(lambda: self.fs.cat_file(path), f"read {url}")
        except FileNotFoundError as err:
            raise MissingFileError(f"{url} does not exist") from err
        except (StorageError, ValueError):
            raise
        except OSError as err:
            raise StorageError(f"read {url}: {_one_line(err)}{storage_hint(err)}") from err

    # ----- shards

    def write_shard(self, kind: str, index: int, table: pa.Table) -> ShardRecord:
        """Serialize, hash and atomically store one shard; returns the record for the manifest."""
        rel = shard_relpath(kind, index)
        if not isinstance(table, pa.Table):
            raise InputError(f"write_shard needs a pyarrow Table, got {type(table).__name__}")
        if kind == "samples":
            table = conform_samples(table)
        try:
            data = parquet_bytes(table)
        except (pa.ArrowException, TypeError) as err:
            raise InputError(f"cannot serialize {kind} shard {index} to Parquet: {_one_line(err)}") from err
        stored = self._put_atomic(rel, data)
        return ShardRecord(kind=kind, index=int(index), path=rel, rows=table.num_rows, sha256=stored["sha256"], bytes=stored["bytes"])

    def read_shard(self, shard: ShardRecord | tuple[str, int], verify: bool = True) -> pa.Table:
        """Read a shard; with a record and `verify`, refuse it unless size, sha256 and rows match."""
        record = shard if isinstance(shard, ShardRecord) else None
        kind, index = (shard.kind, shard.index) if record else shard  # type: ignore[misc]
        rel = shard_relpath(kind, index)
        data = self._get(rel)
        if record is not None and verify:
            self._check_bytes(record, data)
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as err:
            raise CorruptShardError(f"shard {self.url_of(rel)} is not readable Parquet: {_one_line(err)}") from err
        if record is not None and verify and table.num_rows != record.rows:
            raise CorruptShardError(f"shard {self.url_of(rel)} has {table.num_rows} rows, manifest says {record.rows}")
        if kind == "samples" and "prompt" not in table.column_names:
            table = upgrade_samples(table)
        return table

    def _check_bytes(self, record: ShardRecord, data: bytes) -> None:
        actual = sha256_hex(data)
        if actual != record.sha256 or len(data) != record.bytes:
            raise CorruptShardError(
                f"shard {self.url_of(record.path)} is corrupt: sha256 {actual} ({len(data)} bytes) "
                f"!= recorded {record.sha256} ({record.bytes} bytes)"
            )

    def verify(self, record: ShardRecord) -> bool:
        """True iff the stored shard exists and matches the record byte for byte."""
        try:
            self._check_bytes(record, self._get(record.path))
        except (FileNotFoundError, CorruptShardError):
            return False
        return True

    def exists(self, kind: str, index: int) -> bool:
        path = self.shard_path(kind, index)
        self._invalidate(path)
        return bool(self._retry(lambda: self.fs.exists(path), f"stat {self.shard_url(kind, index)}"))

    def delete(self, kind: str, index: int) -> None:
        """Remove a shard if present (idempotent)."""
        self.remove(shard_relpath(kind, index))

    def list_indices(self, kind: str) -> list[int]:
        """Indices of complete shard files of `kind` present on storage (temporaries excluded)."""
        return sorted(self.list_sizes(kind))

    def list_sizes(self, kind: str) -> dict[int, int]:
        """{index: size in bytes} of the complete shard files of `kind`: one listing, no reads,
        which is all a resumed run needs to trust its commit records."""
        sizes = {}
        for name, size in self._list_files(validate_kind(kind)):
            match = _SHARD_FILE.fullmatch(name)
            if match:
                sizes[int(match.group(1))] = size
        return sizes

    def _list_files(self, directory: str) -> list[tuple[str, int]]:
        """(base name, size) of the files directly under `directory`: one listing. Locally through
        os.scandir (fsspec's detailed ls stats each entry again: ~10× slower at 100k files)."""
        path = self._abs(directory)
        what = f"list {self.url_of(directory)}"
        if self.local:
            def scan() -> list[tuple[str, int]]:
                with os.scandir(path) as entries:
                    return [(e.name, e.stat().st_size) for e in entries if e.is_file()]
        else:
            self._invalidate(path)

            def scan() -> list[tuple[str, int]]:
                entries = self.fs.ls(path, detail=True)
                return [(posixpath.basename(str(e["name"]).rstrip("/")), int(e.get("size") or 0)) for e in entries if e.get("type", "file") != "directory"]
        try:
            return self._retry(scan, what)
        except FileNotFoundError:
            return []

    def list_names(self, directory: str) -> list[str]:
        """Base names of the files directly under `directory` (relative to the root)."""
        return sorted(name for name, _ in self._list_files(directory))

    def read_text(self, rel: str) -> str | None:
        """A small text object (manifest, commit), or None if it is not there."""
        self._invalidate(self._abs(rel))
        try:
            return self._get(rel).decode("utf-8")
        except FileNotFoundError:
            return None

    def write_text(self, rel: str, text: str) -> None:
        """Atomically store a small text object."""
        self._put_atomic(rel, text.encode("utf-8"))

    def create_exclusive(self, rel: str, data: bytes) -> None:
        """Create `rel` holding `data` only if nothing is there: FileExistsError otherwise, also
        when another writer creates it at the same moment (O_EXCL locally, If-None-Match on S3)."""
        path = self._abs(rel)

        def create() -> None:
            if self.local:
                self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with self.fs.open(path, "xb") as out:
                out.write(data)

        try:  # transient errors are retried; FileExistsError is permanent (and may be our own retried create: callers check)
            self._retry(create, f"create {self.url_of(rel)}")
        except (FileExistsError, StorageError):
            raise
        except OSError as err:
            raise StorageError(f"create {self.url_of(rel)}: {_one_line(err)}{storage_hint(err)}") from err
        finally:
            self._invalidate(path)

    def remove_empty_dirs(self, rel: str) -> None:
        """Remove the folder `rel` and then the root where they are left empty (local disks:
        object stores have no folders), so a run that wrote nothing leaves nothing."""
        if not self.local:
            return
        for path in (self._abs(rel), self.root):
            try:
                os.rmdir(path)
            except OSError:
                return

    def remove(self, rel: str) -> None:
        """Delete an object if present (idempotent), retried like any write."""
        path = self._abs(rel)

        def rm() -> None:
            try:
                self.fs.rm(path)
            except FileNotFoundError:
                pass

        try:
            self._retry(rm, f"delete {self.url_of(rel)}")
        finally:
            self._invalidate(path)

    def clean_temporaries(self, kind: str) -> int:
        """Remove temporaries left by writers that crashed mid-write (local roots only); returns count."""
        if not self.local:
            return 0
        stale = [name for name, _ in self._list_files(validate_kind(kind)) if TMP_MARK in name]
        for name in stale:
            self._remove_quietly(self._abs(f"{kind}/{name}"))
        return len(stale)

    # ----- manifest

    def read_manifest(self, check: bool = True) -> Manifest | None:
        """The run's manifest with every committed record (snapshot + commit log), or None for a
        fresh output root; with `check`, refused in one line if a record is beyond its plan."""
        return commit_log.read_run(self, check)

    def commit(self, manifest: Manifest, records: list[ShardRecord], discard: list[str] | tuple[str, ...] = ()) -> None:
        """Commit records to the run with one small write (≤ a few kB whatever the run's size),
        only while this writer holds the store's lease (if it took one: `lease`)."""
        if self.lease is not None:
            self.lease.check()
        commit_log.append(self, manifest, records, discard)

    def compact(self) -> int:
        """Fold the loose commits into one segment (bounds what readers list and open)."""
        return commit_log.compact(self)

    def write_manifest(self, manifest: Manifest) -> None:
        """Store the whole manifest as the snapshot and drop the commit log it covers (O(records):
        at the end of a run); never contains storage options."""
        commit_log.snapshot(self, manifest)

    def clear(self) -> None:
        """Remove a previous run (manifest first, so a crash midway never leaves a manifest that
        names deleted shards); only the product's own entries, never other files under the root."""
        self._remove_quietly(self._abs(MANIFEST_NAME))
        for entry in RUN_ENTRIES:
            path = self._abs(entry)
            if self._retry(lambda path=path: self.fs.exists(path), f"stat {self.url_of(entry)}"):
                self._retry(lambda path=path: self.fs.rm(path, recursive=True), f"delete {self.url_of(entry)}")
            self._invalidate(path)

    # ----- preflight

    def check_writable(self) -> None:
        """Write, read back and delete a probe, so a bad URL fails before any sampling starts."""
        rel = f".write-probe-{uuid.uuid4().hex}"
        payload = b"minority-synth write probe\n"
        try:
            self._put_atomic(rel, payload)
            try:
                back = self._get(rel)
            finally:
                try:  # retried like any write: a passing blip must not leave the probe behind
                    self._retry(lambda: self.fs.rm(self._abs(rel)), f"delete {self.url_of(rel)}")
                except Exception:
                    pass
                self._invalidate(self._abs(rel))
            if back != payload:
                raise StorageError("the probe read back different bytes")
        except Exception as err:
            cause = err.__cause__ if isinstance(err, StorageError) and err.__cause__ else err
            raise StorageError(f"output {self.url} is not writable: {_one_line(cause)}{storage_hint(cause)}") from err


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
