"""Prefect tasks for reference sets, scoring and reports: thin wrappers over minority_core.runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from minority_core.io import Manifest, ShardRecord, ShardStore
from minority_core.runs import reference, results, scoring
from tasks.score_pool import ScorePool

PROGRESS_EVERY_S = 10.0  # at most one progress line this often, whatever the number of shards


@task(name="build-reference-set", cache_policy=NO_CACHE, persist_result=False)
def build_reference_set(source: str, extractor: str, reference_root: str, storage_options: dict, k_lof: int, k_rarity: int, index: str, device: str,
                        overwrite: bool = False) -> dict:
    """Features of the real data + the precomputed ReferenceSet (self-kNN radii, LOF lrd), saved once."""
    return reference.build_reference_set(source, extractor, reference_root, storage_options, k_lof, k_rarity, index, device, logger=_logger(),
                                         overwrite=overwrite)


@task(name="score-shards", cache_policy=NO_CACHE, persist_result=False)
def score_shards(pool: ScorePool, store: ShardStore, manifest: Manifest, todo: list[ShardRecord]) -> int:
    """Every shard of `todo` on the pool's actors, each committed as it finishes: one task run for
    the whole scoring (not one per shard); the error of a shard that fails names it."""
    return scoring.commit_scores(store, manifest, _progress(pool.scored(todo), len(todo)))


@task(name="arm-result", cache_policy=NO_CACHE, persist_result=False)
def arm_result(run: str, reference_features: np.ndarray, storage_options: dict, name: str | None = None, seconds: float | None = None):
    return results.arm_result(run, reference_features, storage_options, name=name, seconds=seconds)


def _logger():
    """The task run's logger, or this package's when the task runs as a plain function (one-shot commands)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("minority_synth")


def _progress(records: Iterable[ShardRecord], total: int) -> Iterator[ShardRecord]:
    """Pass records through, logging how many are scored at most every PROGRESS_EVERY_S."""
    logger = _logger()
    last = time.monotonic()
    for count, record in enumerate(records, 1):
        yield record
        if time.monotonic() - last >= PROGRESS_EVERY_S and count < total:
            logger.info("scored %d of %d shards", count, total)
            last = time.monotonic()
