"""Prefect tasks of a synthesis run: thin wrappers over minority_core and the actor pool."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.artifacts import update_progress_artifact
from prefect.cache_policies import NO_CACHE

from minority_core import __version__
from minority_core.errors import InputError
from minority_core.io import Manifest, ShardStore, config_hash
from minority_core.runs.generate import shard_seed

SAMPLES = "samples"


@dataclass(frozen=True)
class ShardSpec:
    index: int
    rows: int
    seed: int
    first_index: int  # run-wide index of the shard's first sample (picks its prompts)


@dataclass(frozen=True)
class Plan:
    pending: list[ShardSpec]
    total: int
    manifest: Manifest


def open_store(config) -> ShardStore:
    return ShardStore(config.out, config.full_storage_options())


@task(name="plan-shards", cache_policy=NO_CACHE, persist_result=False)
def plan_shards(config) -> Plan:
    """Split the run into shards, check the output location, and find what is already committed.

    A committed shard is skipped only if its bytes still match the manifest's sha256; one that is
    missing or corrupt is planned again. A different config in the same place is refused unless
    `overwrite`, which clears the old run first.
    """
    logger = get_run_logger()
    store = open_store(config)
    store.check_writable()
    identity = config.output_identity()
    manifest = store.read_manifest()
    if manifest is not None and manifest.config_hash != config_hash(identity) and not same_run(manifest.config, identity):
        if not config.overwrite:
            changed = sorted(k for k in identity.keys() | manifest.config.keys() if manifest.config.get(k) != identity.get(k))
            raise InputError(f"{config.out} holds a run with a different config (differs in: {', '.join(changed)}); use another --out or pass --overwrite")
        logger.warning("overwrite: removing the previous run at %s", config.out)
        store.clear()
        manifest = None
    extractor_kind = f"features/{identity['extractor']}"
    if manifest is None and any(store.list_indices(kind) for kind in (SAMPLES, extractor_kind)):
        # Shard files but no manifest: another tool's output (e.g. `sample --out`), or a run killed
        # before its first commit. Never deleted without being asked.
        if not config.overwrite:
            raise InputError(f"{config.out} holds shard files but no manifest.json (another command's output, or a run killed before "
                             "its first commit): use another --out, or pass --overwrite to replace them")
        logger.warning("overwrite: removing shard files without a manifest at %s", config.out)
        store.clear()
    if manifest is None:  # written at the first commit, so a run that fails before it leaves nothing
        manifest = Manifest(config=identity, code_version=__version__)
    for kind in (SAMPLES, extractor_kind):  # temporaries of writers killed mid-write
        if store.clean_temporaries(kind):
            logger.warning("removed temporary files left in %s by an interrupted writer", kind)
    orphans = remove_uncommitted(store, manifest, (SAMPLES, extractor_kind))
    if orphans:
        logger.warning("removed %d complete but uncommitted shard file(s) left by an earlier failed run: %s", len(orphans), ", ".join(orphans))
    specs = [
        ShardSpec(k, min(config.shard_size, config.num_samples - k * config.shard_size), shard_seed(config.seed, k), k * config.shard_size)
        for k in range(-(-config.num_samples // config.shard_size))
    ]
    pending = []
    for spec in specs:
        records = [r for r in manifest.records(SAMPLES) + manifest.records(extractor_kind) if r.index == spec.index]
        if len(records) == 2 and all(store.verify(r) for r in records):
            continue
        if records:
            logger.warning("shard %05d is missing or corrupt on storage: regenerating it", spec.index)
            for r in records:
                manifest.discard(r.kind, r.index)
        pending.append(spec)
    logger.info("%d shards planned, %d already committed, %d to generate", len(specs), len(specs) - len(pending), len(pending))
    return Plan(pending, len(specs), manifest)


def same_run(recorded: dict, identity: dict) -> bool:
    """An identity recorded by an earlier version that means the same run: before class labels
    were a list, every sampler config carried `class_label: null`."""
    sampler = dict(recorded.get("sampler") or {})
    if "class_label" in sampler and sampler["class_label"] is None:
        sampler.pop("class_label")
        return {**recorded, "sampler": sampler} == identity
    return False


def remove_uncommitted(store: ShardStore, manifest: Manifest | None, kinds) -> list[str]:
    """Delete shard files of `kinds` that the manifest does not list: complete files a failed run
    wrote but never committed. Afterwards a glob over OUT/samples/ sees committed shards only."""
    removed = []
    for kind in kinds:
        committed = manifest.committed(kind) if manifest is not None else set()
        for index in store.list_indices(kind):
            if index not in committed:
                store.delete(kind, index)
                removed.append(f"{kind}/{index:05d}")
    return removed


class ManifestCommitter:
    """Adds finished shards to the manifest and writes it atomically; one writer (the driver).

    `close()` ends a failed run: later commits are dropped, so the manifest stays as it was when
    the failure was seen, and the flow can remove every shard file it does not list."""

    def __init__(self, store: ShardStore, manifest: Manifest, total: int, progress_id=None) -> None:
        self.store, self.manifest, self.total, self.progress_id = store, manifest, total, progress_id
        self.lock = threading.Lock()
        self.closed = False

    def committed_count(self) -> int:
        return len(self.manifest.committed(SAMPLES))

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def commit(self, result) -> int:
        with self.lock:
            if self.closed:
                return self.committed_count()
            records = [r for r in (result.features, result.samples) if r is not None]
            for record in records:
                self.manifest.add(record)
            try:
                self.store.write_manifest(self.manifest)
            except BaseException:  # not on storage, so not committed: memory must say the same
                for record in records:
                    self.manifest.discard(record.kind, record.index)
                raise
            done = self.committed_count()
        if self.progress_id is not None:
            update_progress_artifact(self.progress_id, 100.0 * done / self.total)
        return done


def worth_retrying(task, task_run, state) -> bool:
    """Retry a shard after a crash or a storage outage, not after a failure its seed will repeat."""
    from minority_core.diffusion.samplers import NonFiniteSampleError

    try:
        state.result()
    except (NonFiniteSampleError, ValueError):  # same seed, same config: the same error again
        return False
    except BaseException:
        return True
    return True


@task(name="generate-shard", task_run_name="shard-{spec.index:05d}", retries=2, retry_delay_seconds=2, retry_condition_fn=worth_retrying, cache_policy=NO_CACHE, persist_result=False)
def generate_shard(pool, spec: ShardSpec, committer: ManifestCommitter):
    """Generate one shard on an idle actor (which writes it), then commit it to the manifest."""
    from tasks.ray_pool import call

    with pool.borrow() as actor:
        result = call(actor, "generate_shard", spec.index, spec.rows, spec.seed, spec.first_index)
    done = committer.commit(result)
    get_run_logger().info("shard %05d: %d rows in %.1f s (%d/%d committed)", spec.index, spec.rows, result.seconds, done, committer.total)
    return result
