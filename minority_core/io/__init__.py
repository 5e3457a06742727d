"""Parquet shards and the run manifest on any fsspec URL (DESIGN.md §4).

Layout under the output root::

    manifest.json                           run config, code version, committed shards
    samples/shard-00000.parquet             sample_id, seed, image{bytes,path}, label, guidance, arm
    features/<extractor>/shard-00000.parquet  sample_id, feature (fixed_size_list<float32>)
    scores/<extractor>/shard-00000.parquet  sample_id, avgknn, lof, rarity, in_support

A shard is visible only once complete: on a local disk it is written to a hidden temporary
sibling and renamed into place; on object stores (s3, gs, memory) it is one PUT, which is
atomic there. The manifest (owned by the driver) records each committed shard's row count and
sha256, so a rerun skips committed shards and a reader can detect corruption.

This module never imports prefect or ray: it runs inside Ray actors and the driver alike.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import posixpath
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from minority_core.errors import CorruptShardError, InputError, MissingFileError, StorageError
from minority_core.errors import one_line as _one_line

__all__ = [
    "SAMPLES_SCHEMA",
    "FEATURES_SCHEMA",
    "MANIFEST_NAME",
    "StorageError",
    "CorruptShardError",
    "ShardRecord",
    "Manifest",
    "ShardStore",
    "sample_id",
    "encode_png",
    "decode_png",
    "samples_table",
    "features_table",
    "config_hash",
    "parquet_bytes",
    "sha256_hex",
    "retry",
    "validate_kind",
]

T = TypeVar("T")

MANIFEST_NAME = "manifest.json"
RUN_ENTRIES = ("samples", "features", "scores", "report")  # what `clear()` removes besides the manifest
MAX_SHARD_INDEX = 99_999  # five digits in file names and sample ids keep them sortable
MAX_ROW = 999_999  # six digits in sample ids
ROWS_PER_GROUP = 64  # images are large: small row groups keep readers' memory bounded
BYTES_PER_GROUP = 64 * 2**20
_KIND_SEGMENT = re.compile(r"^[a-z0-9_][a-z0-9_.-]*$")
_TMP_MARK = ".tmp-"


# --------------------------------------------------------------------------- schemas

_HF_FEATURES = {
    "sample_id": {"dtype": "string", "_type": "Value"},
    "seed": {"dtype": "int64", "_type": "Value"},
    "image": {"_type": "Image"},
    "label": {"dtype": "int32", "_type": "Value"},
    "guidance": {"dtype": "float32", "_type": "Value"},
    "arm": {"dtype": "string", "_type": "Value"},
    "prompt": {"dtype": "string", "_type": "Value"},
}

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

SAMPLES_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("sample_id", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("image", IMAGE_TYPE),
        pa.field("label", pa.int32(), nullable=True),
        pa.field("guidance", pa.float32()),
        pa.field("arm", pa.string()),
        pa.field("prompt", pa.string(), nullable=True),  # text-to-image models only; null otherwise
    ],
    # The `huggingface` key makes datasets.load_dataset("parquet", ...) decode `image` as PIL.
    metadata={"huggingface": json.dumps({"info": {"features": _HF_FEATURES}})},
)


def FEATURES_SCHEMA(dim: int) -> pa.Schema:  # noqa: N802 - name is part of the contract
    """Schema of a features shard: one fixed-length float32 vector per sample."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise InputError(f"feature dim must be a positive int, got {dim!r}")
    return pa.schema([pa.field("sample_id", pa.string()), pa.field("feature", pa.list_(pa.float32(), dim))])


def sample_id(shard_index: int, row: int) -> str:
    """Globally unique, sortable id of row `row` of shard `shard_index`: `00012-000034`."""
    _check_int("shard index", shard_index, MAX_SHARD_INDEX)
    _check_int("row", row, MAX_ROW)
    return f"{shard_index:05d}-{row:06d}"


def _check_int(name: str, value: Any, upper: int) -> None:
    """Refuse bools, floats and out-of-range ints: they would make ids or file names ambiguous."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= int(value) <= upper:
        raise InputError(f"{name} must be in [0, {upper}], got {value}")


# --------------------------------------------------------------------------- images


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG of one uint8 HWC image (grayscale "L" when C == 1, RGB when C == 3)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise InputError(f"image must be uint8, got {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise InputError(f"image must be HWC with C in (1, 3), got shape {arr.shape}")
    pil = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if arr.shape[2] == 1 else arr))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Inverse of `encode_png`: uint8 HWC (C = 1 for grayscale, else 3)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as pil:
        if pil.mode not in ("L", "RGB"):
            pil = pil.convert("RGB")
        arr = np.asarray(pil, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


# --------------------------------------------------------------------------- tables


def samples_table(
    images: np.ndarray,
    shard_index: int,
    seed: int,
    labels: Sequence[int | None] | np.ndarray | None = None,
    guidance: float = 0.0,
    arm: str = "guided",
    prompts: Sequence[str] | None = None,
) -> pa.Table:
    """Build a samples shard from a uint8 NHWC batch; validation errors are one-line ValueErrors."""
    arr = _check_images(images)
    _check_int("shard index", shard_index, MAX_SHARD_INDEX)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not -(2**63) <= int(seed) < 2**63:
        raise InputError(f"seed must be an int64, got {seed!r}")
    scale = _check_guidance(guidance)
    if not isinstance(arm, str) or not arm:
        raise InputError(f"arm must be a non-empty string, got {arm!r}")
    n = arr.shape[0]
    label_array = _label_array(labels, n)
    prompt_array = _prompt_array(prompts, n)
    ids = [sample_id(shard_index, row) for row in range(n)]
    image_array = pa.StructArray.from_arrays(
        [pa.array([encode_png(img) for img in arr], pa.binary()), pa.array([f"{i}.png" for i in ids], pa.string())],
        fields=list(IMAGE_TYPE),
    )
    columns = [
        pa.array(ids, pa.string()),
        pa.array(np.full(n, int(seed), dtype=np.int64)),
        image_array,
        label_array,
        pa.array(np.full(n, scale, dtype=np.float32)),
        pa.array([arm] * n, pa.string()),
        prompt_array,
    ]
    return pa.Table.from_arrays(columns, schema=SAMPLES_SCHEMA)


def _prompt_array(prompts: Any, n: int) -> pa.Array:
    """The text prompt of each sample (text-to-image models), or nulls."""
    if prompts is None:
        return pa.nulls(n, pa.string())
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise InputError("prompts must be a list of strings, one per image")
    if len(prompts) != n:
        raise InputError(f"prompts has {len(prompts)} entries but there are {n} images")
    return pa.array(list(prompts), pa.string())


def _check_images(images: Any) -> np.ndarray:
    """uint8, 4-D NHWC, C in {1, 3}: anything else is a caller bug better caught before storage."""
    if not isinstance(images, np.ndarray):
        raise InputError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise InputError(f"images must be uint8 (convert and clip first), got {images.dtype}")
    if images.ndim != 4:
        raise InputError(f"images must be 4-D NHWC, got shape {images.shape}")
    if images.shape[3] not in (1, 3):
        raise InputError(f"images must have 1 or 3 channels (NHWC), got shape {images.shape}")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise InputError(f"images must have non-zero height and width, got shape {images.shape}")
    return images


def _check_guidance(guidance: Any) -> float:
    """A finite real scale: NaN would silently poison every downstream comparison of arms."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.integer, np.floating)):
        raise InputError(f"guidance must be a real number, got {type(guidance).__name__}")
    value = float(guidance)
    if not math.isfinite(value) or abs(value) > float(np.finfo(np.float32).max):
        raise InputError(f"guidance must be finite (and fit float32), got {guidance!r}")
    return value


def _label_array(labels: Any, n: int) -> pa.Array:
    """int32 labels with None allowed (unconditional samples), length checked against images."""
    if labels is None:
        return pa.nulls(n, pa.int32())
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise InputError(f"labels must be 1-D, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"labels must be integers, got dtype {labels.dtype}")
        values: list[int | None] = [int(v) for v in labels]
    else:
        values = list(labels)
        for v in values:
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise InputError(f"labels must be ints or None, got {v!r}")
    if len(values) != n:
        raise InputError(f"labels has {len(values)} entries but there are {n} images")
    if any(v is not None and not -(2**31) <= int(v) < 2**31 for v in values):
        raise InputError("labels must fit int32")
    return pa.array(values, pa.int32())


def features_table(sample_ids: Sequence[str], features: np.ndarray) -> pa.Table:
    """Build a features shard; NaN/inf features are refused (they would break every kNN metric)."""
    ids = [str(s) for s in sample_ids]
    arr = np.asarray(features)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"features must be floating point, got {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InputError(f"features must be 2-D (N, dim) with dim > 0, got shape {arr.shape}")
    if arr.shape[0] != len(ids):
        raise InputError(f"{len(ids)} sample ids for {arr.shape[0]} feature rows")
    if len(set(ids)) != len(ids):
        raise InputError("sample ids must be unique")
    with np.errstate(over="ignore"):
        arr32 = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr32).all():
        raise InputError("features contain NaN or inf (or overflow float32)")
    dim = arr32.shape[1]
    flat = pa.array(arr32.reshape(-1), pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, dim)
    return pa.Table.from_arrays([pa.array(ids, pa.string()), column], schema=FEATURES_SCHEMA(dim))


SCORE_COLUMNS = ("avgknn", "lof", "rarity")


def scores_table(sample_ids: Sequence[str], scores: dict[str, np.ndarray]) -> pa.Table:
    """A scores shard: sample_id, avgknn, lof, rarity (NaN = out of support), in_support."""
    ids = [str(s) for s in sample_ids]
    columns = {"sample_id": pa.array(ids, pa.string())}
    for name in SCORE_COLUMNS:
        values = np.asarray(scores[name], dtype=np.float64)
        if values.shape != (len(ids),):
            raise InputError(f"score {name!r} has shape {values.shape}, expected ({len(ids)},)")
        columns[name] = pa.array(values, pa.float64())
    columns["in_support"] = pa.array(np.asarray(scores["in_support"], dtype=bool))
    return pa.table(columns)


def features_matrix(table: pa.Table) -> np.ndarray:
    """The feature column of a features shard as a float32 [N, dim] array (no copy per row)."""
    column = table.column("feature").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialize to Parquet in memory (zstd, row groups sized for images) so the hash is of what we store."""
    rows = table.num_rows
    per_row = max(1, table.nbytes // rows) if rows else 1
    group = max(1, min(ROWS_PER_GROUP, BYTES_PER_GROUP // per_row))
    # Dictionary-encoding PNG bytes is wasted work: they never repeat.
    names = [n for n in table.column_names if n != "image"]
    use_dict: bool | list[str] = True if len(names) == table.num_columns else names
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=group, use_dictionary=use_dict)
    return sink.getvalue().to_pybytes()


def sha256_hex(data: bytes) -> str:
    """Hex sha256: the integrity check recorded in the manifest."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- retry

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
                raise StorageError(f"{what}: gave up after {attempts} attempts ({_one_line(err)}){_hint(err)}") from err
            delay = min(max_delay, base_delay * 2**attempt) * (0.5 + random.random() / 2)
            sleep(delay)
    raise AssertionError("unreachable")


def _hint(err: BaseException) -> str:
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


# --------------------------------------------------------------------------- records and manifest


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
        if record.path != shard_relpath(record.kind, record.index):
            raise InputError(f"shard record path {record.path!r} does not match {record.key}")
        if not re.fullmatch(r"[0-9a-f]{64}", record.sha256) or record.rows < 0 or record.bytes < 0:
            raise InputError(f"invalid shard record {data!r}")
        return record


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces, no NaN): equal configs hash equal."""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"config is not JSON-serialisable: {_one_line(err)}") from err
    return sha256_hex(text.encode("utf-8"))


@dataclass
class Manifest:
    """What a run is (config, code) and which shards are committed; the driver owns it."""

    config: dict[str, Any]
    config_hash: str = ""
    code_version: str = ""
    shards: dict[str, ShardRecord] = field(default_factory=dict)
    created: str = ""
    updated: str = ""

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
        self.updated = _now()

    def discard(self, kind: str, index: int) -> None:
        """Forget a shard (e.g. one found corrupt, to be regenerated)."""
        self.shards.pop(f"{kind}/{index:05d}", None)
        self.updated = _now()

    def committed(self, kind: str) -> set[int]:
        """Indices of committed shards of `kind`: what a resumed run skips."""
        return {r.index for r in self.shards.values() if r.kind == kind}

    def records(self, kind: str) -> list[ShardRecord]:
        """Committed records of `kind`, by index."""
        return sorted((r for r in self.shards.values() if r.kind == kind), key=lambda r: r.index)

    def to_json(self) -> str:
        data = {
            "config": self.config,
            "config_hash": self.config_hash,
            "code_version": self.code_version,
            "shards": {key: rec.to_dict() for key, rec in self.shards.items()},
            "created": self.created,
            "updated": self.updated,
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
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
            raise InputError(f"invalid manifest: {_one_line(err)}") from err
        for key, rec in shards.items():
            if key != rec.key:
                raise InputError(f"invalid manifest: key {key!r} holds the record of {rec.key!r}")
        return manifest


# --------------------------------------------------------------------------- paths


def validate_kind(kind: str) -> str:
    """`samples`, `features/<extractor>`, ...: lowercase relative segments, so no write leaves the root."""
    if not isinstance(kind, str) or not kind:
        raise InputError(f"shard kind must be a non-empty string, got {kind!r}")
    segments = kind.split("/")
    for seg in segments:
        if seg in ("", ".", "..") or not _KIND_SEGMENT.match(seg):
            raise InputError(
                f"invalid shard kind {kind!r}: use relative '/'-separated segments of [a-z0-9_.-] "
                "(no '..', no leading '/' or '.')"
            )
    return kind


def shard_relpath(kind: str, index: int) -> str:
    """Path of a shard relative to the output root."""
    validate_kind(kind)
    _check_int("shard index", index, MAX_SHARD_INDEX)
    return f"{kind}/shard-{int(index):05d}.parquet"


# --------------------------------------------------------------------------- store


class ShardStore:
    """Shards and manifest under one fsspec URL; safe to use from many processes at once.

    Each writer writes only its own shards; the manifest has a single writer (the driver).
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
        self.local = isinstance(fs, LocalFileSystem)
        self.root = self._normalise_root(root)

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

    def _put_atomic(self, rel: str, data: bytes) -> None:
        """Make `rel` hold exactly `data`, never visible half-written; errors name the URL."""
        path = self._abs(rel)
        what = f"write {self.url_of(rel)}"
        try:
            if self.local:
                self._retry(lambda: self._put_via_rename(path, data), what)
            else:
                self._retry(lambda: self.fs.pipe_file(path, data), what)
        except StorageError:
            raise
        except OSError as err:
            raise StorageError(f"{what}: {_one_line(err)}{_hint(err)}") from err
        finally:
            self._invalidate(path)

    def _put_via_rename(self, path: str, data: bytes) -> None:
        """Write a hidden temporary sibling, fsync it, rename it over `path`; remove it on failure."""
        parent, name = posixpath.split(path)
        self.fs.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".{name}{_TMP_MARK}{uuid.uuid4().hex}")
        try:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                fileno = getattr(f, "fileno", None)
                if fileno is not None:
                    os.fsync(fileno())
            self.fs.mv(tmp, path)
        except BaseException:
            self._remove_quietly(tmp)
            raise

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
            raise StorageError(f"read {url}: {_one_line(err)}{_hint(err)}") from err

    # ----- shards

    def write_shard(self, kind: str, index: int, table: pa.Table) -> ShardRecord:
        """Serialize, hash and atomically store one shard; returns the record for the manifest."""
        rel = shard_relpath(kind, index)
        if not isinstance(table, pa.Table):
            raise InputError(f"write_shard needs a pyarrow Table, got {type(table).__name__}")
        if kind == "samples":
            table = _conform_samples(table)
        try:
            data = parquet_bytes(table)
        except (pa.ArrowException, TypeError) as err:
            raise InputError(f"cannot serialize {kind} shard {index} to Parquet: {_one_line(err)}") from err
        self._put_atomic(rel, data)
        return ShardRecord(kind=kind, index=int(index), path=rel, rows=table.num_rows, sha256=sha256_hex(data), bytes=len(data))

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
            table = _upgrade_samples(table)
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
        path = self.shard_path(kind, index)

        def rm() -> None:
            try:
                self.fs.rm(path)
            except FileNotFoundError:
                pass

        try:
            self._retry(rm, f"delete {self.shard_url(kind, index)}")
        finally:
            self._invalidate(path)

    def list_indices(self, kind: str) -> list[int]:
        """Indices of complete shard files of `kind` present on storage (temporaries excluded)."""
        directory = self._abs(validate_kind(kind))
        self._invalidate(directory)
        try:
            names = self._retry(lambda: self.fs.ls(directory, detail=False), f"list {self.url_of(kind)}")
        except FileNotFoundError:
            return []
        pattern = re.compile(r"shard-(\d{5})\.parquet")
        found = (pattern.fullmatch(posixpath.basename(str(n).rstrip("/"))) for n in names)
        return sorted(int(m.group(1)) for m in found if m)

    def clean_temporaries(self, kind: str) -> int:
        """Remove temporaries left by writers that crashed mid-write (local roots only); returns count."""
        if not self.local:
            return 0
        directory = self._abs(validate_kind(kind))
        if not self.fs.isdir(directory):
            return 0
        stale = [p for p in self.fs.ls(directory, detail=False) if _TMP_MARK in posixpath.basename(p)]
        for path in stale:
            self._remove_quietly(path)
        return len(stale)

    # ----- manifest

    def read_manifest(self) -> Manifest | None:
        """The run's manifest, or None for a fresh output root."""
        self._invalidate(self._abs(MANIFEST_NAME))
        try:
            text = self._get(MANIFEST_NAME)
        except FileNotFoundError:
            return None
        try:
            return Manifest.from_json(text)
        except ValueError as err:
            raise StorageError(f"{self.url_of(MANIFEST_NAME)}: {err}; fix or remove it") from err

    def write_manifest(self, manifest: Manifest) -> None:
        """Atomically replace the manifest (pretty, sorted JSON; never contains storage options)."""
        self._put_atomic(MANIFEST_NAME, manifest.to_json().encode("utf-8"))

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
            raise StorageError(f"output {self.url} is not writable: {_one_line(cause)}{_hint(cause)}") from err


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _upgrade_samples(table: pa.Table) -> pa.Table:
    """A samples shard written before the `prompt` column existed reads as today's schema (null
    prompts), so a resumed older run concatenates with its new shards."""
    table = table.append_column(pa.field("prompt", pa.string(), nullable=True), pa.nulls(table.num_rows, pa.string()))
    return table.replace_schema_metadata(SAMPLES_SCHEMA.metadata) if table.schema.equals(SAMPLES_SCHEMA, check_metadata=False) else table


def _conform_samples(table: pa.Table) -> pa.Table:
    """Samples shards must match SAMPLES_SCHEMA (metadata included, so datasets decodes images)."""
    if not table.schema.equals(SAMPLES_SCHEMA, check_metadata=False):
        raise InputError(f"samples table does not match SAMPLES_SCHEMA: got {table.schema.to_string(show_schema_metadata=False)!r}")
    return table.replace_schema_metadata(SAMPLES_SCHEMA.metadata)
