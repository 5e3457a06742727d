"""Scoring a run: AvgkNN, LOF and Rarity of every committed features shard against a reference set.

`ScoreWorker` loads the reference set and the run's store once and then scores one shard per
call, so it runs as a Ray actor (tasks/score_pool.py), in-process (`workers=0`), or in a test.
A scores shard is committed to the run like any other; a rerun skips shards whose scores are
committed and intact, so scoring resumes per shard. Readers of the scores (`score_table`) read
only the scores shards: sample ids and four numbers per sample, never images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import pyarrow as pa

from minority_core.errors import InputError, MissingFileError
from minority_core.io import Manifest, ShardRecord, ShardStore, features_matrix, sample_id, scores_table
from minority_core.runs.commit import ManifestCommitter
from minority_core.runs.plan import remove_uncommitted


def open_run(url: str, storage_options: dict, check: bool = True) -> tuple[ShardStore, Manifest]:
    """The store and manifest of a run that `synthesize` wrote; a clear error if there is none, or
    (with `check`) if a record is beyond the run's plan (`verify` reads it unchecked to repair it)."""
    store = ShardStore(url, storage_options)
    manifest = store.read_manifest(check)
    if manifest is None:
        raise InputError(f"no run at {store.url}: no manifest.json (run `minority-synth synthesize` first)")
    return store, manifest


def scores_kind(manifest: Manifest) -> str:
    return f"scores/{manifest.config['extractor']}"


def record_scoring(store: ShardStore, manifest: Manifest, reference_index: str, k_avg: int, reference_sha256: str | None = None) -> None:
    """Scores of one run come from one reference set and one k: `scores/<extractor>/scoring.json`
    records them (the set's URL and the sha256 of its meta.json, which holds every file's hash)
    with the first scores; scoring again with another reference, the same URL rebuilt, or another
    k is one line (keeping the old shards and adding new ones would mix two scorings, and
    skipping them would report the old ones as the new)."""
    path = f"{scores_kind(manifest)}/scoring.json"
    wanted = {"reference": reference_index, "k_avg": k_avg, **({"reference_sha256": reference_sha256} if reference_sha256 else {})}
    text = store.read_text(path)
    if text is not None and manifest.committed(scores_kind(manifest)):
        try:
            had = json.loads(text)
            had = {"reference_sha256": reference_sha256, **had} if reference_sha256 else had  # one written before the hash was
        except ValueError:
            had = {"reference": "an unreadable scoring.json", "k_avg": "?"}
        if {**had, "reference_sha256": None} == {**wanted, "reference_sha256": None} and had != wanted:
            raise InputError(f"{store.url} was scored against {reference_index} before that reference set was rebuilt (its meta.json changed): "
                             f"delete {store.url_of(scores_kind(manifest))} to rescore against the new one")
        if had != wanted:
            raise InputError(f"{store.url} was scored against {had['reference']} with k={had['k_avg']}; scoring it against {reference_index} "
                             f"with k={k_avg} would mix the two: pass the same --reference and --k, or delete {store.url_of(scores_kind(manifest))} to rescore")
        return
    store.write_text(path, json.dumps(wanted, sort_keys=True))  # first scoring (or one that committed nothing yet)


def unscored(store: ShardStore, manifest: Manifest) -> tuple[list[ShardRecord], int]:
    """The features records that still need scoring, and how many are scored already.

    A shard is scored when its scores record is committed and the file is listed at the recorded
    size: one listing, no shard bytes read, as for resuming a synthesis (`minority-synth verify`
    checks bytes). Scores files that were written but never committed (a failed scoring's, or
    temporaries of a killed one) are removed first, so OUT/scores/ holds committed shards only."""
    kind = scores_kind(manifest)
    store.clean_temporaries(kind)
    remove_uncommitted(store, manifest, (kind,))
    sizes = store.list_sizes(kind)
    done = {r.index for r in manifest.records(kind) if sizes.get(r.index) == r.bytes}
    return [r for r in manifest.records(f"features/{manifest.config['extractor']}") if r.index not in done], len(done)


def check_committed(store: ShardStore, manifest: Manifest, kinds: Iterable[str]) -> None:
    """Refuse in one line if a committed record of `kinds` has no file at its recorded size (one
    listing per kind, no bytes read): scores of samples that are gone would describe nothing."""
    for kind in kinds:
        sizes = store.list_sizes(kind)
        gone = [r.key for r in manifest.records(kind) if sizes.get(r.index) != r.bytes]
        if gone:
            more = f" and {len(gone) - 3} more" if len(gone) > 3 else ""
            raise MissingFileError(f"{store.url}: committed shard(s) {', '.join(gone[:3])}{more} are missing from storage or resized: rerun "
                                   "`minority-synth synthesize` with the run's options (it regenerates them), then score again")


def score_shard(store: ShardStore, refset, record: ShardRecord, extractor: str, k_avg: int, run: str | None = None) -> ShardRecord:
    """One batched kNN query per shard against the precomputed reference side; writes its scores,
    with the `run` column (the run's URL@identity, as selections and exports carry it)."""
    table = store.read_shard(record)
    scores = refset.score(features_matrix(table), k_avg=k_avg)
    return store.write_shard(f"scores/{extractor}", record.index, scores_table(table.column("sample_id").to_pylist(), scores, run))


class ScoreWorker:
    """Scores the features shards of one run against one reference set, loaded once.

    `reference_index` is the saved ReferenceSet's URL (REFERENCE/<extractor>/index). Like the
    shard worker, a start-up error (a missing or changed reference set) is kept and raised by
    `ping`, so it reaches the driver as itself in one line rather than as a dead Ray actor."""

    def __init__(self, run: str, reference_index: str, extractor: str, k_avg: int = 5, storage_options: dict | None = None) -> None:
        self.extractor, self.k_avg = extractor, k_avg
        self.init_error: Exception | None = None
        try:
            from minority_core.metrics import ReferenceSet
            from minority_core.runs.select import run_name

            self.store = ShardStore(run, storage_options)
            manifest = self.store.read_manifest()
            self.run = run_name(self.store, manifest) if manifest is not None else None
            self.refset = ReferenceSet.load(reference_index, storage_options)
        except Exception as exc:
            self.init_error = exc

    def ping(self) -> int:
        """The worker's pid once it is ready; its start-up error otherwise."""
        if self.init_error is not None:
            raise self.init_error
        return os.getpid()

    def score_shard(self, record: ShardRecord) -> ShardRecord:
        """Score one features shard and write its scores shard; returns the scores record."""
        self.ping()
        return score_shard(self.store, self.refset, record, self.extractor, self.k_avg, self.run)


def commit_scores(store: ShardStore, manifest: Manifest, scored: Iterable[ShardRecord]) -> int:
    """Commit each scores record as it arrives (a failure later keeps what was committed), then
    store the snapshot once; returns how many were committed.

    The committer gets no samples total: scoring adds no samples shards, and a total would make
    it store the whole snapshot at every commit."""
    committer = ManifestCommitter(store, manifest, None)
    count = 0
    try:
        for record in scored:
            committer.commit_records([record])
            count += 1
    except BaseException:
        committer.close()
        raise
    committer.finish()
    return count


def score_table(store: ShardStore, manifest: Manifest) -> pa.Table:
    """The run's committed scores in shard order (sample_id, avgknn, lof, rarity, in_support),
    read shard by shard: a few numbers per sample, however large the images are."""
    records = manifest.records(scores_kind(manifest))
    if not records:
        return pa.table({})
    return pa.concat_tables([store.read_shard(r) for r in records])


def check_scores_cover_samples(run: str, store: ShardStore, manifest: Manifest, scores: pa.Table) -> list[ShardRecord]:
    """The samples records, once the scores are known to cover every sample in the same order.

    Samples shard k holds ids `sample_id(k, row)` in row order, so comparing the scores' ids with
    those (and the shard indices and row counts) checks the order without reading a samples shard."""
    samples = manifest.records("samples")
    rows = sum(r.rows for r in samples)
    if scores.num_rows != rows:
        raise InputError(f"{run}: {scores.num_rows} scores for {rows} samples; run `minority-synth score` first")
    ids, start = scores.column("sample_id") if rows else None, 0
    for record in samples:  # shard by shard: never every id twice
        if ids.slice(start, record.rows).to_pylist() != [sample_id(record.index, row) for row in range(record.rows)]:
            raise InputError(f"{run}: scores and samples are not in the same order; rerun `minority-synth score`")
        start += record.rows
    return samples
