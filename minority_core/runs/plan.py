"""Planning a run: split it into shards, check the output location, find what is already there.

Plain functions over a `ShardStore`, so the same planning serves a Prefect flow, a script or a
test. A rerun of the same config resumes (committed shards are skipped); a different config in
the same place is refused unless `overwrite`, which clears the old run first. Shard k's seed
derives from (run seed, k) alone, so what a shard holds never depends on the worker count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from minority_core import __version__
from minority_core.errors import InputError
from minority_core.io import Manifest, ShardStore, config_hash

SAMPLES = "samples"
MANIFEST = "manifest.json"
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSpec:
    """One shard to generate: its index, row count, generator seed, and the run-wide index of
    its first sample (which picks its prompts and class labels)."""

    index: int
    rows: int
    seed: int
    first_index: int


class ShardSpecs(Sequence[ShardSpec]):
    """The shards of a run (or a subset of them), computed on access: a 10M-shard plan is one
    int64 array, not 10M objects."""

    def __init__(self, num_samples: int, shard_size: int, seed: int, indices: np.ndarray | None = None) -> None:
        self.num_samples, self.shard_size, self.seed = num_samples, shard_size, seed
        count = -(-num_samples // shard_size)
        self.indices = np.arange(count, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, item: int) -> ShardSpec: ...
    @overload
    def __getitem__(self, item: slice) -> ShardSpecs: ...
    def __getitem__(self, item: int | slice) -> ShardSpec | ShardSpecs:
        if isinstance(item, slice):
            return self.subset(self.indices[item])
        k = int(self.indices[item])
        return ShardSpec(k, min(self.shard_size, self.num_samples - k * self.shard_size), shard_seed(self.seed, k), k * self.shard_size)

    def subset(self, indices: np.ndarray) -> ShardSpecs:
        return ShardSpecs(self.num_samples, self.shard_size, self.seed, indices)


@dataclass(frozen=True)
class Plan:
    """What a run still has to do: the pending shards, the shard count, the manifest so far."""

    pending: ShardSpecs
    total: int
    manifest: Manifest

    @property
    def done(self) -> int:
        return self.total - len(self.pending)


def shard_seed(run_seed: int, shard_index: int) -> int:
    """A 63-bit seed from (run seed, shard index) only; independent streams per shard."""
    return int(np.random.SeedSequence([int(run_seed), int(shard_index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def shard_specs(num_samples: int, shard_size: int, seed: int) -> ShardSpecs:
    """The run's shards in order: all full but the last."""
    return ShardSpecs(num_samples, shard_size, seed)


def plan_run(
    store: ShardStore, identity: dict, specs: ShardSpecs, features_kind: str, overwrite: bool = False, logger: logging.Logger | logging.LoggerAdapter = LOG
) -> Plan:
    """Check the output location, reconcile it with the run `identity`, and list the shards to make.

    A committed shard is skipped when its records are committed and its files are listed at the
    recorded sizes (no shard bytes are read: `verify_run` checks bytes, on request); one that is
    missing or resized is planned again. Complete but uncommitted shard files (a failed run's) and
    temporaries (a killed writer's) are removed, so a reader sees committed shards only.
    """
    store.check_writable()
    manifest = store.read_manifest()
    if manifest is not None and manifest.config_hash != config_hash(identity) and not same_run(manifest.config, identity):
        if not overwrite:
            changed = sorted(k for k in identity.keys() | manifest.config.keys() if manifest.config.get(k) != identity.get(k))
            raise InputError(f"{store.url} holds a run with a different config (differs in: {', '.join(changed)}); use another --out or pass --overwrite")
        logger.warning("overwrite: removing the previous run at %s", store.url)
        store.clear()
        manifest = None
    kinds = (SAMPLES, features_kind)
    if manifest is None and any(store.list_indices(kind) for kind in kinds):
        # Shard files but no manifest: another tool's output (e.g. `sample --out`), or a run killed
        # before its first commit. Never deleted without being asked.
        if not overwrite:
            raise InputError(f"{store.url} holds shard files but no manifest.json (another command's output, or a run killed before "
                             "its first commit): use another --out, or pass --overwrite to replace them")
        logger.warning("overwrite: removing shard files without a manifest at %s", store.url)
        store.clear()
    if manifest is None:  # written at the first commit, so a run that fails before it leaves nothing
        manifest = Manifest(config=identity, code_version=__version__)
    for kind in kinds:
        if store.clean_temporaries(kind):
            logger.warning("removed temporary files left in %s by an interrupted writer", kind)
    sizes = {kind: store.list_sizes(kind) for kind in kinds}  # one listing per kind serves the clean-up and the plan
    orphans = remove_uncommitted(store, manifest, kinds, sizes)
    if orphans:
        logger.warning("removed %d complete but uncommitted shard file(s) left by an earlier failed run: %s", len(orphans), ", ".join(orphans))
    pending = pending_shards(store, manifest, specs, features_kind, logger, sizes)
    logger.info("%d shards planned, %d already committed, %d to generate", len(specs), len(specs) - len(pending), len(pending))
    return Plan(pending, len(specs), manifest)


def pending_shards(
    store: ShardStore, manifest: Manifest, specs: ShardSpecs, features_kind: str, logger: logging.Logger | logging.LoggerAdapter = LOG,
    sizes: dict[str, dict[int, int]] | None = None,
) -> ShardSpecs:
    """The shards still to make. A shard is done when its samples and features records are
    committed and both files are listed with the recorded size: one listing per kind, no shard
    bytes read (a flipped byte is `minority-synth verify`'s to find). Missing or resized ones are
    regenerated."""
    kinds = (SAMPLES, features_kind)
    records = {kind: {r.index: r for r in manifest.records(kind)} for kind in kinds}
    sizes = sizes if sizes is not None else {kind: store.list_sizes(kind) for kind in kinds}
    intact = set.intersection(*({i for i, r in records[kind].items() if sizes[kind].get(i) == r.bytes} for kind in kinds))
    todo = np.setdiff1d(specs.indices, np.fromiter(intact, dtype=np.int64, count=len(intact)), assume_unique=True)
    for index in todo[np.isin(todo, np.fromiter(set(records[SAMPLES]) | set(records[features_kind]), dtype=np.int64))]:
        logger.warning("shard %05d is missing or corrupt on storage: regenerating it", int(index))
        for kind in kinds:
            if int(index) in records[kind]:
                manifest.discard(kind, int(index))
    return specs.subset(todo)


def resolve_out(out: str, workers: int) -> str:
    """The output URL as every process of the run must see it: `file://` paths made absolute here,
    in the driver (an actor of a cluster started elsewhere resolves a relative one against its own
    working directory), and `memory://` refused with workers (each actor has its own memory:
    its shards would be kept nowhere the driver can read)."""
    if out.startswith("memory://") and workers:
        raise InputError(f"--out {out} is this process's memory, which Ray workers cannot see: use --workers 0, or a folder or bucket")
    if out.startswith("file://") and not out.startswith("file:///"):
        import os

        return "file://" + os.path.abspath(os.path.expanduser(out[len("file://"):]))
    return out


def check_sample_out(store: ShardStore) -> None:
    """`sample` writes OUT/samples/shard-00000.parquet: only into a folder that holds no run (a
    synthesize run's committed shard 0 would be overwritten and fail its sha256)."""
    if store.read_text(MANIFEST) is not None or store.list_names("commits"):  # one being written: its lease refuses `sample`
        raise InputError(f"{store.url} holds a synthesize run (or one being written), not a folder `sample` created: give `sample` another --out")


def same_run(recorded: dict, identity: dict) -> bool:
    """An identity recorded by an earlier version that means the same run: before class labels
    were a list, every sampler config carried `class_label: null`."""
    sampler = dict(recorded.get("sampler") or {})
    if "class_label" in sampler and sampler["class_label"] is None:
        sampler.pop("class_label")
        return {**recorded, "sampler": sampler} == identity
    return False


def remove_uncommitted(store: ShardStore, manifest: Manifest | None, kinds: Iterable[str], sizes: dict[str, dict[int, int]] | None = None) -> list[str]:
    """Delete shard files of `kinds` that the manifest does not list: complete files a failed run
    wrote but never committed. Afterwards a glob over OUT/samples/ sees committed shards only.
    `sizes` (a listing per kind, as `list_sizes` gives) is updated to what remains."""
    removed = []
    for kind in kinds:
        committed = manifest.committed(kind) if manifest is not None else set()
        listed = sizes[kind] if sizes is not None else store.list_sizes(kind)
        for index in sorted(set(listed) - committed):
            store.delete(kind, index)
            listed.pop(index)
            removed.append(f"{kind}/{index:05d}")
    return removed
