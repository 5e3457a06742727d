"""Scoring a run: AvgkNN, LOF and Rarity of every committed features shard against a reference set.

A scores shard is committed to the run's manifest like any other; a rerun skips shards whose
scores are committed and intact, so scoring resumes per shard.
"""

from __future__ import annotations

import pyarrow as pa

from minority_core.errors import InputError
from minority_core.io import Manifest, ShardRecord, ShardStore, features_matrix, scores_table


def open_run(url: str, storage_options: dict) -> tuple[ShardStore, Manifest]:
    """The store and manifest of a run that `synthesize` wrote; a clear error if there is none."""
    store = ShardStore(url, storage_options)
    manifest = store.read_manifest()
    if manifest is None:
        raise InputError(f"no run at {store.url}: no manifest.json (run `minority-synth synthesize` first)")
    return store, manifest


def unscored(store: ShardStore, manifest: Manifest) -> tuple[list[ShardRecord], int]:
    """The features records that still need scoring, and how many are scored already."""
    extractor = manifest.config["extractor"]
    done = {r.index for r in manifest.records(f"scores/{extractor}") if store.verify(r)}
    return [r for r in manifest.records(f"features/{extractor}") if r.index not in done], len(done)


def score_shard(store: ShardStore, refset, record: ShardRecord, extractor: str, k_avg: int) -> ShardRecord:
    """One batched kNN query per shard against the precomputed reference side; writes its scores."""
    table = store.read_shard(record)
    scores = refset.score(features_matrix(table), k_avg=k_avg)
    return store.write_shard(f"scores/{extractor}", record.index, scores_table(table.column("sample_id").to_pylist(), scores))


def read_kind(store: ShardStore, records: list[ShardRecord]) -> pa.Table:
    """All shards of one kind, concatenated in shard order, checksums verified."""
    return pa.concat_tables([store.read_shard(r) for r in sorted(records, key=lambda r: r.index)])
