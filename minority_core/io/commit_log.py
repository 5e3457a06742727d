"""The commit log of a run: commits that cost the same whatever the run's size, read as one manifest.

Rewriting `manifest.json` on every commit makes a run quadratic in its shards (53 MB per write at
100k shards). Instead a commit is one small object, and the manifest is rebuilt by readers:

    manifest.json                      the snapshot: config, records as of `snapshot_seq`
    commits/000000000123-<writer>.json one commit: {"seq", "records": [...], "discard": [keys]}
    commits/index.json                 segments compacted so far and the last seq they cover
    commits/segment-000000001024.jsonl one compacted entry per line, covering seq ≤ its number

A reader applies the snapshot, then the segments listed in the index (those past the
snapshot), then the loose commits past the index, in seq order; later entries win. Every
object is written atomically, and each step of compaction (segment → index → delete the loose
commits it covers) and of the final snapshot (manifest.json → delete the log) leaves a state
that reads the same, so a crash at any point loses nothing: leftovers are skipped by seq.
A `manifest.json` without `snapshot_seq` (written before the log existed) reads and resumes.
"""

from __future__ import annotations

import json
import posixpath
import re
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from minority_core.errors import StorageError
from minority_core.io.manifest import MANIFEST_NAME, Manifest, ShardRecord

if TYPE_CHECKING:
    from minority_core.io.store import ShardStore

COMMITS_DIR = "commits"
INDEX_NAME = f"{COMMITS_DIR}/index.json"
COMPACT_EVERY = 1024  # loose commits folded into one segment: bounds what a reader lists and opens
_COMMIT = re.compile(r"(\d{12})-([0-9a-f]{8})\.json")
_SEGMENT = re.compile(r"segment-(\d{12})\.jsonl")


def new_writer_id() -> str:
    """Names this writer's commits, so two writers of one run never overwrite each other's."""
    return uuid.uuid4().hex[:8]


def read_run(store: ShardStore, check: bool = True) -> Manifest | None:
    """The run's manifest with every committed record, or None for a fresh output root. With
    `check`, a record its plan cannot hold (`Manifest.plan_violations`) is one line naming it."""
    head = store.read_text(MANIFEST_NAME)
    if head is None:
        return None
    try:
        manifest = Manifest.from_json(head)
    except ValueError as err:
        raise StorageError(f"{store.url_of(MANIFEST_NAME)}: {err}; fix or remove it") from err
    manifest.stored = True
    index = _read_index(store)
    for name in index["segments"]:
        if _seq_of(_SEGMENT, name) > manifest.snapshot_seq:
            for line in (store.read_text(name) or "").splitlines():
                if line.strip():
                    _apply(manifest, json.loads(line), store, name)
    manifest.log_seq = max(manifest.snapshot_seq, index["compacted_seq"])
    for name, seq in loose_commits(store, after=manifest.log_seq):
        _apply(manifest, json.loads(store.read_text(name) or "{}"), store, name)
        manifest.log_seq = max(manifest.log_seq, seq)
    if check and (bad := manifest.plan_violations()):
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise StorageError(f"{store.url}: manifest {bad[0][1]}{more}: run `minority-synth verify --run {store.url} --repair` to forget "
                           "such records (the next synthesize regenerates their shards)")
    return manifest


def append(store: ShardStore, manifest: Manifest, records: Iterable[ShardRecord], discard: Iterable[str] = ()) -> str:
    """Commit records (and forget keys) with one small write; the in-memory manifest follows only
    once the write has landed. The first commit of a fresh run also writes the manifest head."""
    records, discard = list(records), list(discard)
    if not manifest.stored:
        _write_snapshot(store, manifest)
    seq = manifest.log_seq + 1
    name = f"{COMMITS_DIR}/{seq:012d}-{manifest.writer}.json"
    entry = {"seq": seq, "records": [r.to_dict() for r in records], "discard": discard}
    store.write_text(name, json.dumps(entry, separators=(",", ":"), sort_keys=True))
    manifest.log_seq = seq
    for key in discard:
        manifest.shards.pop(key, None)
        manifest.discarded.add(key)
    for record in records:
        manifest.add(record)
    return name


def compact(store: ShardStore) -> int:
    """Fold every loose commit into one segment; returns how many it folded. Reads the log from
    storage, so commits of any writer are kept."""
    index = _read_index(store)
    _remove_leftovers(store, index)
    loose = loose_commits(store, after=index["compacted_seq"])
    if not loose:
        return 0
    last = loose[-1][1]
    segment = f"{COMMITS_DIR}/segment-{last:012d}.jsonl"
    lines = [json.dumps(json.loads(store.read_text(name) or "{}"), separators=(",", ":"), sort_keys=True) for name, _ in loose]
    store.write_text(segment, "\n".join(lines) + "\n")
    store.write_text(INDEX_NAME, json.dumps({"segments": [*index["segments"], segment], "compacted_seq": last}))
    for name, _ in loose:
        store.remove(name)
    return len(loose)


def snapshot(store: ShardStore, manifest: Manifest) -> None:
    """Write the whole manifest (this writer's view merged with the stored log) as the snapshot,
    then remove the log it covers. O(records): for the end of a run, not for every commit."""
    stored = read_run(store, check=False) if manifest.stored else None
    if stored is not None:
        for key, record in stored.shards.items():  # what other writers committed meanwhile
            if key not in manifest.discarded:
                manifest.shards.setdefault(key, record)
        manifest.log_seq = max(manifest.log_seq, stored.log_seq)
    _write_snapshot(store, manifest, seq=manifest.log_seq)
    for name in store.list_names(COMMITS_DIR):
        covered = _COMMIT.fullmatch(name) is not None and _seq_of(_COMMIT, name) <= manifest.snapshot_seq
        if covered or _SEGMENT.fullmatch(name) or name == "index.json":
            store.remove(f"{COMMITS_DIR}/{name}")


def _remove_leftovers(store: ShardStore, index: dict[str, Any]) -> None:
    """What an interrupted compaction left: loose commits its segment already covers, and a
    segment it wrote but never listed in the index. Both are invisible to readers."""
    listed = {posixpath.basename(s) for s in index["segments"]}
    for name in store.list_names(COMMITS_DIR):
        covered = _COMMIT.fullmatch(name) is not None and _seq_of(_COMMIT, name) <= index["compacted_seq"]
        if covered or (_SEGMENT.fullmatch(name) and name not in listed):
            store.remove(f"{COMMITS_DIR}/{name}")


def loose_commits(store: ShardStore, after: int) -> list[tuple[str, int]]:
    """(path, seq) of the loose commits past seq `after`, in commit order."""
    found = []
    for name in store.list_names(COMMITS_DIR):
        match = _COMMIT.fullmatch(name)
        if match and int(match.group(1)) > after:
            found.append((f"{COMMITS_DIR}/{name}", int(match.group(1)), match.group(2)))
    return [(path, seq) for path, seq, _ in sorted(found, key=lambda f: (f[1], f[2]))]


def _write_snapshot(store: ShardStore, manifest: Manifest, seq: int | None = None) -> None:
    if seq is not None:
        manifest.snapshot_seq = seq
    store.write_text(MANIFEST_NAME, manifest.to_json())
    manifest.stored = True


def _read_index(store: ShardStore) -> dict[str, Any]:
    text = store.read_text(INDEX_NAME)
    if text is None:
        return {"segments": [], "compacted_seq": 0}
    try:
        index = json.loads(text)
        return {"segments": [str(s) for s in index["segments"]], "compacted_seq": int(index["compacted_seq"])}
    except (ValueError, KeyError, TypeError) as err:
        raise StorageError(f"{store.url_of(INDEX_NAME)} is not a commit index ({err}): restore it or remove the run") from err


def _apply(manifest: Manifest, entry: dict[str, Any], store: ShardStore, where: str) -> None:
    try:
        records = [ShardRecord.from_dict(r) for r in entry.get("records", [])]
        discard = [str(k) for k in entry.get("discard", [])]
    except (ValueError, TypeError, AttributeError) as err:
        raise StorageError(f"{store.url_of(where)} is not a valid commit ({err}): restore it or remove the run") from err
    for key in discard:
        manifest.shards.pop(key, None)
    for record in records:
        manifest.shards[record.key] = record


def _seq_of(pattern: re.Pattern[str], path: str) -> int:
    match = pattern.fullmatch(posixpath.basename(path))
    return int(match.group(1)) if match else 0
