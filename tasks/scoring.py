"""Prefect tasks for reference sets, scoring, filtering and reports (thin wrappers over minority_core)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from minority_core.io import ShardRecord, ShardStore, features_matrix, scores_table


def reference_url(reference: str, extractor: str) -> str:
    return f"{reference.rstrip('/')}/{extractor}"


@task(name="build-reference-set", cache_policy=NO_CACHE, persist_result=False)
def build_reference_set(source: str, extractor: str, reference: str, storage_options: dict, k_lof: int, k_rarity: int, index: str, device: str) -> dict:
    """Features of the real data + the precomputed ReferenceSet (self-kNN radii, LOF lrd), saved once."""
    from minority_core.io import features_table, sample_id
    from minority_core.io.sources import load_reference_images
    from minority_core.metrics import ReferenceSet
    from minority_core.metrics.features import get_extractor

    images = load_reference_images(source, storage_options)
    features = get_extractor(extractor, device=device)(images)
    url = reference_url(reference, extractor)
    store = ShardStore(url, storage_options)
    store.check_writable()
    store.write_shard("features", 0, features_table([sample_id(0, i) for i in range(len(features))], features))
    ReferenceSet.build(features, k_lof=k_lof, k_rarity=k_rarity, index=index).save(f"{url}/index", storage_options)
    get_run_logger().info("reference set %s: %d images, %d-d %s features", url, len(features), features.shape[1], extractor)
    return {"url": url, "rows": int(len(features)), "dim": int(features.shape[1])}


def load_reference_features(reference: str, extractor: str, storage_options: dict) -> np.ndarray:
    store = ShardStore(reference_url(reference, extractor), storage_options)
    return features_matrix(store.read_shard(("features", 0), verify=False))


@task(name="score-shard", task_run_name="score-{record.index:05d}", cache_policy=NO_CACHE, persist_result=False, retries=1)
def score_shard(store: ShardStore, refset, record: ShardRecord, extractor: str, k_avg: int) -> ShardRecord:
    """One batched kNN query per shard against the precomputed reference side."""
    table = store.read_shard(record)
    scores = refset.score(features_matrix(table), k_avg=k_avg)
    return store.write_shard(f"scores/{extractor}", record.index, scores_table(table.column("sample_id").to_pylist(), scores))


def read_kind(store: ShardStore, records: list[ShardRecord]) -> pa.Table:
    """All shards of one kind, concatenated in shard order, checksums verified."""
    return pa.concat_tables([store.read_shard(r) for r in sorted(records, key=lambda r: r.index)])
