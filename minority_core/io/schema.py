"""What a shard holds: the Arrow schemas of samples, features and scores, and the table builders
that validate their inputs before anything reaches storage.

Samples carry their images as PNG bytes in a Hugging Face `Image` struct, so a samples folder
loads with `datasets.load_dataset("parquet", ...)` as PIL images. `parquet_bytes` serialises
deterministically (fixed compression, row groups and encodings): equal tables give equal bytes,
hence equal hashes across runs and resumes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from minority_core.errors import InputError
from minority_core.io.images import encode_png
from minority_core.io.manifest import MAX_ROW, MAX_SHARD_INDEX, check_int

ROWS_PER_GROUP = 64  # images are large: small row groups keep readers' memory bounded
BYTES_PER_GROUP = 64 * 2**20

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
    check_int("shard index", shard_index, MAX_SHARD_INDEX)
    check_int("row", row, MAX_ROW)
    return f"{shard_index:05d}-{row:06d}"


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
    check_int("shard index", shard_index, MAX_SHARD_INDEX)
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


def scores_table(sample_ids: Sequence[str], scores: dict[str, np.ndarray], run: str | None = None) -> pa.Table:
    """A scores shard: run (where given), sample_id, avgknn, lof, rarity (NaN = out of support),
    in_support. Sample ids restart in every run, so scores of several runs join on (run,
    sample_id); the constant column costs a few bytes per shard (dictionary-encoded)."""
    ids = [str(s) for s in sample_ids]
    columns = {} if run is None else {"run": pa.array([run] * len(ids), pa.string())}
    columns["sample_id"] = pa.array(ids, pa.string())
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


def upgrade_samples(table: pa.Table) -> pa.Table:
    """A samples shard written before the `prompt` column existed reads as today's schema (null
    prompts), so a resumed older run concatenates with its new shards."""
    table = table.append_column(pa.field("prompt", pa.string(), nullable=True), pa.nulls(table.num_rows, pa.string()))
    return table.replace_schema_metadata(SAMPLES_SCHEMA.metadata) if table.schema.equals(SAMPLES_SCHEMA, check_metadata=False) else table


def conform_samples(table: pa.Table) -> pa.Table:
    """Samples shards must match SAMPLES_SCHEMA (metadata included, so datasets decodes images)."""
    if not table.schema.equals(SAMPLES_SCHEMA, check_metadata=False):
        raise InputError(f"samples table does not match SAMPLES_SCHEMA: got {table.schema.to_string(show_schema_metadata=False)!r}")
    return table.replace_schema_metadata(SAMPLES_SCHEMA.metadata)
