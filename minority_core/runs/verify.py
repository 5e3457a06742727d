"""Verifying a run byte for byte: the explicit check a resume no longer pays for.

Every committed record's object is read back and its size, sha256 and row count compared with
the record, in parallel. `repair` forgets the bad records (one commit) and deletes their files,
so the next `synthesize` (or `score`) of the run regenerates exactly those shards.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from minority_core.errors import CorruptShardError, InputError, StorageError
from minority_core.io import Manifest, ShardRecord, ShardStore, sample_id

LOG = logging.getLogger(__name__)


def check_record(store: ShardStore, record: ShardRecord) -> str | None:
    """None if the stored shard matches its record, else what is wrong with it (one line)."""
    try:
        table = store.read_shard(record)  # size + sha256 against the record, then Parquet and row count
    except FileNotFoundError:
        return "missing"
    except CorruptShardError as err:
        return str(err).splitlines()[0]
    if "sample_id" in table.column_names and record.kind.split("/")[0] in ("samples", "features", "scores"):
        ids = table.column("sample_id").to_pylist()  # shard k holds ids k-0 … k-(rows-1): a copy of another shard does not
        if ids != [sample_id(record.index, row) for row in range(len(ids))]:
            return f"holds sample ids {ids[0] if ids else ''}… that are not shard {record.index:05d}'s (a copy of another shard?)"
    return None


def verify_run(store: ShardStore, manifest: Manifest, workers: int = 4, repair: bool = False, logger: logging.Logger | logging.LoggerAdapter = LOG) -> dict:
    """Check every committed shard of the run; returns what was checked and what is bad."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
        raise InputError(f"workers must be an integer in [1, 64], got {workers!r}")
    records = sorted(manifest.shards.values(), key=lambda r: (r.kind, r.index))
    beyond = dict(manifest.plan_violations())  # records the plan cannot hold: bad whatever their bytes
    with ThreadPoolExecutor(max_workers=workers) as pool:  # map submits lazily enough: results are small
        problems = list(pool.map(lambda r: beyond.get(r.key) or check_record(store, r), records))
    bad = [{"shard": r.key, "path": store.url_of(r.path), "problem": p} for r, p in zip(records, problems, strict=True) if p]
    for item in bad:
        logger.warning("%s: %s", item["shard"], item["problem"])
    if repair and bad:
        keys = [item["shard"] for item in bad]
        store.commit(manifest, [], discard=keys)  # forgotten first: a crash now leaves nothing that claims the file
        for record in (r for r, p in zip(records, problems, strict=True) if p):
            try:
                store.delete(record.kind, record.index)
            except StorageError as err:
                logger.warning("%s: could not delete (%s); the next run overwrites it", record.key, str(err).splitlines()[0])
        store.write_manifest(manifest)
    return {"run": store.url, "checked": len(records), "bad": bad, "repaired": bool(repair and bad)}
