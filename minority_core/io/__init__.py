"""Parquet shards and the run manifest on any fsspec URL (docs/DESIGN.md §4).

Layout under the output root::

    manifest.json                           run config, code version, committed shards
    samples/shard-00000.parquet             sample_id, seed, image{bytes,path}, label, guidance, arm, prompt
    features/<extractor>/shard-00000.parquet  sample_id, feature (fixed_size_list<float32>)
    scores/<extractor>/shard-00000.parquet  sample_id, avgknn, lof, rarity, in_support

A shard is visible only once complete: on a local disk it is written to a hidden temporary
sibling and renamed into place; on object stores (s3, gs, memory) it is one PUT, which is
atomic there. So a crashed or killed writer never leaves a half shard that a reader or a resumed
run could take for a finished one. The manifest (owned by the driver) records each committed
shard's row count and sha256, so a rerun skips committed shards and a reader can detect
corruption.

The modules, in the order data passes through them: `images` (the PNG codec), `schema` (what a
shard holds, and its deterministic Parquet bytes), `manifest` (records, manifest, paths),
`retry` (which storage errors to retry, and their fixes), `atomic` (the one atomic writer),
`store` (`ShardStore`), and `sources` (real images for reference sets).

This package never imports prefect or ray: it runs inside Ray actors and the driver alike.
"""

from minority_core.errors import CorruptShardError, StorageError
from minority_core.io.atomic import write_atomic
from minority_core.io.images import decode_png, encode_png
from minority_core.io.manifest import MANIFEST_NAME, Manifest, ShardRecord, config_hash, sha256_hex, shard_relpath, validate_kind
from minority_core.io.retry import is_transient, retry
from minority_core.io.schema import (
    FEATURES_SCHEMA,
    SAMPLES_SCHEMA,
    SCORE_COLUMNS,
    features_matrix,
    features_table,
    parquet_bytes,
    sample_id,
    samples_table,
    scores_table,
)
from minority_core.io.store import ShardStore

__all__ = [
    "SAMPLES_SCHEMA",
    "FEATURES_SCHEMA",
    "SCORE_COLUMNS",
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
    "scores_table",
    "features_matrix",
    "config_hash",
    "parquet_bytes",
    "sha256_hex",
    "shard_relpath",
    "retry",
    "is_transient",
    "validate_kind",
    "write_atomic",
]
