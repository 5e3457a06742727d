"""Prefect tasks for reference sets, scoring and reports: thin wrappers over minority_core.runs."""

from __future__ import annotations

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from minority_core.io import ShardRecord, ShardStore
from minority_core.runs import reference, results, scoring


@task(name="build-reference-set", cache_policy=NO_CACHE, persist_result=False)
def build_reference_set(source: str, extractor: str, reference_root: str, storage_options: dict, k_lof: int, k_rarity: int, index: str, device: str) -> dict:
    """Features of the real data + the precomputed ReferenceSet (self-kNN radii, LOF lrd), saved once."""
    return reference.build_reference_set(source, extractor, reference_root, storage_options, k_lof, k_rarity, index, device, logger=get_run_logger())


@task(name="score-shard", task_run_name="score-{record.index:05d}", cache_policy=NO_CACHE, persist_result=False, retries=1)
def score_shard(store: ShardStore, refset, record: ShardRecord, extractor: str, k_avg: int) -> ShardRecord:
    return scoring.score_shard(store, refset, record, extractor, k_avg)


@task(name="arm-result", cache_policy=NO_CACHE, persist_result=False)
def arm_result(run: str, reference_features: np.ndarray, storage_options: dict, name: str | None = None, seconds: float | None = None):
    return results.arm_result(run, reference_features, storage_options, name=name, seconds=seconds)
