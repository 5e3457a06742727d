"""The run manifest and where shards live: shard records, the manifest, paths and their checks.

The manifest (owned by the driver) records each committed shard's row count, size and sha256,
so a rerun skips committed shards and a reader can detect corruption. Paths are derived from
(kind, index) alone, and both are validated, so nothing read from a manifest or passed by a
caller can name a file outside the output root.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from minority_core.errors import InputError
from minority_core.errors import one_line as _one_line

MANIFEST_NAME = "manifest.json"
# Shard indices print with at least five digits (`shard-00012.parquet`, `00012-000034`) and grow
# past them (`shard-1234567.parquet`): 10M shards of up to 1M rows, far beyond what one run plans.
MAX_SHARD_INDEX = 9_999_999
MAX_ROW = 999_999  # six digits in sample ids
_KIND_SEGMENT = re.compile(r"^[a-z0-9_][a-z0-9_.-]*$")


def check_int(name: str, value: Any, upper: int) -> None:
    """Refuse bools, floats and out-of-range ints: they would make ids or file names ambiguous."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= int(value) <= upper:
        raise InputError(f"{name} must be in [0, {upper}], got {value}")


_VALID_KINDS: set[str] = set()  # a run has a handful of kinds: each is checked once per process
_SHA256 = re.compile(r"[0-9a-f]{64}")


def validate_kind(kind: str) -> str:
    """`samples`, `features/<extractor>`, ...: lowercase relative segments, so no write leaves the root."""
    if isinstance(kind, str) and kind in _VALID_KINDS:
        return kind
    if not isinstance(kind, str) or not kind:
        raise InputError(f"shard kind must be a non-empty string, got {kind!r}")
    segments = kind.split("/")
    for seg in segments:
        if seg in ("", ".", "..") or not _KIND_SEGMENT.match(seg):
            raise InputError(
                f"invalid shard kind {kind!r}: use relative '/'-separated segments of [a-z0-9_.-] "
                "(no '..', no leading '/' or '.')"
            )
    _VALID_KINDS.add(kind)
    return kind


def shard_relpath(kind: str, index: int) -> str:
    """Path of a shard relative to the output root."""
    validate_kind(kind)
    check_int("shard index", index, MAX_SHARD_INDEX)
    return f"{kind}/shard-{int(index):05d}.parquet"


def sha256_hex(data: bytes) -> str:
    """Hex sha256: the integrity check recorded in the manifest."""
    return hashlib.sha256(data).hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces, no NaN): equal configs hash equal."""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"config is not JSON-serialisable: {_one_line(err)}") from err
    return sha256_hex(text.encode("utf-8"))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ShardRecord:
    """One committed shard: enough to find it, skip it on resume and verify it on read."""

    kind: str
    index: int
    path: str  # relative to the output root, always "/"-separated
    rows: int
    sha256: str
    bytes: int

    @property
    def key(self) -> str:
        """Manifest key: `samples/00003`, `features/inception/00003`."""
        return f"{self.kind}/{self.index:05d}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index,
            "path": self.path,
            "rows": self.rows,
            "sha256": self.sha256,
            "bytes": self.bytes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardRecord:
        """Parse and validate: a hand-edited or truncated manifest must not pass silently."""
        try:
            record = cls(
                kind=str(data["kind"]),
                index=int(data["index"]),
                path=str(data["path"]),
                rows=int(data["rows"]),
                sha256=str(data["sha256"]),
                bytes=int(data["bytes"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"invalid shard record {data!r}: {_one_line(err)}") from err
        validate_kind(record.kind)
        if not 0 <= record.index <= MAX_SHARD_INDEX or record.path != f"{record.kind}/shard-{record.index:05d}.parquet":
            raise InputError(f"shard record path {record.path!r} does not match {record.key}")
        if not _SHA256.fullmatch(record.sha256) or record.rows < 0 or record.bytes < 0:
            raise InputError(f"invalid shard record {data!r}")
        return record


@dataclass
class Manifest:
    """What a run is (config, code) and which shards are committed; the driver owns it."""

    config: dict[str, Any]
    config_hash: str = ""
    code_version: str = ""
    shards: dict[str, ShardRecord] = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    snapshot_seq: int = 0  # the last commit (io/commit_log.py) the stored snapshot includes
    # how this object relates to storage, never serialised: the last commit seq it has applied,
    # whether a manifest.json exists for it, and the id its own commits are written under
    log_seq: int = field(default=0, compare=False)
    stored: bool = field(default=False, compare=False)
    writer: str = field(default_factory=lambda: uuid.uuid4().hex[:8], compare=False)
    discarded: set[str] = field(default_factory=set, compare=False)  # keys this object dropped since it was read

    def __post_init__(self) -> None:
        if not isinstance(self.config, dict):
            raise InputError(f"config must be a dict, got {type(self.config).__name__}")
        expected = config_hash(self.config)
        if not self.config_hash:
            self.config_hash = expected
        elif self.config_hash != expected:
            raise InputError(f"manifest config_hash {self.config_hash} does not match its config ({expected})")
        self.created = self.created or _now()
        self.updated = self.updated or self.created

    def add(self, record: ShardRecord) -> None:
        """Record a committed shard (replacing an earlier record of the same shard)."""
        self.shards[record.key] = record
        self.discarded.discard(record.key)
        self.updated = _now()

    def discard(self, kind: str, index: int) -> None:
        """Forget a shard (e.g. one found corrupt, to be regenerated)."""
        key = f"{kind}/{index:05d}"
        self.shards.pop(key, None)
        self.discarded.add(key)
        self.updated = _now()

    def committed(self, kind: str) -> set[int]:
        """Indices of committed shards of `kind`: what a resumed run skips."""
        return {r.index for r in self.shards.values() if r.kind == kind}

    def records(self, kind: str) -> list[ShardRecord]:
        """Committed records of `kind`, by index."""
        return sorted((r for r in self.shards.values() if r.kind == kind), key=lambda r: r.index)

    def plan_violations(self) -> list[tuple[str, str]]:
        """(key, problem) of every record the run's plan cannot hold: an index past its last shard
        (a copied shard under a new index), or rows other than that shard's (an edited count).
        Sample ids derive from (index, row), so within the plan they are unique. No I/O: the
        plan is `num_samples` and `shard_size` of the config (a config without them is no run's)."""
        n, size = self.config.get("num_samples"), self.config.get("shard_size")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (n, size)):
            return []
        count = -(-n // size)
        plan = f"the run's plan of {n} samples in {count} shards of {size}"
        bad = []
        for key, record in self.shards.items():
            if record.index >= count:
                bad.append((key, f"record {key} is beyond {plan}"))
            elif record.rows != min(size, n - record.index * size):
                bad.append((key, f"record {key} says {record.rows} rows where {plan} has {min(size, n - record.index * size)}"))
        return sorted(bad)

    def to_json(self) -> str:
        """The snapshot: canonical JSON (sorted keys), written only when a run finishes."""
        data = {
            "config": self.config,
            "config_hash": self.config_hash,
            "code_version": self.code_version,
            "shards": {key: rec.to_dict() for key, rec in self.shards.items()},
            "created": self.created,
            "updated": self.updated,
            "snapshot_seq": self.snapshot_seq,
        }
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate (keys must match records, hash must match config)."""
        try:
            data = json.loads(text)
            shards = {key: ShardRecord.from_dict(rec) for key, rec in data.get("shards", {}).items()}
            manifest = cls(
                config=data["config"],
                config_hash=str(data.get("config_hash", "")),
                code_version=str(data.get("code_version", "")),
                shards=shards,
                created=str(data.get("created", "")),
                updated=str(data.get("updated", "")),
                snapshot_seq=int(data.get("snapshot_seq", 0)),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
            raise InputError(f"invalid manifest: {_one_line(err)}") from err
        for key, rec in shards.items():
            if key != rec.key:
                raise InputError(f"invalid manifest: key {key!r} holds the record of {rec.key!r}")
        return manifest
