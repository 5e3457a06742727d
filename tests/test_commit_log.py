"""The commit log: constant-cost commits, readers that see exactly the committed shards, compaction
and snapshots that lose nothing when they crash, resume without reading shard bytes, verify."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minority_core.io import Manifest, ShardStore, features_table, sample_id, samples_table
from minority_core.io.commit_log import COMMITS_DIR, INDEX_NAME, compact
from minority_core.runs.commit import ManifestCommitter
from minority_core.runs.plan import plan_run, shard_specs
from minority_core.runs.verify import verify_run

KIND = "features/x"
# No num_samples/shard_size: these stand-in shards (1-2 rows, up to 3000 of them) follow no run's
# plan, which readers check only for configs that have one (Manifest.plan_violations).
IDENTITY = {"model": "m", "seed": 0}


def write(store: ShardStore, index: int, value: float = 1.0):
    """One small shard of `KIND` on storage (not committed)."""
    return store.write_shard(KIND, index, features_table([sample_id(index, 0)], np.full((1, 2), value)))


def write_samples(store: ShardStore, index: int):
    """One small samples shard (two 2×2 grey images), not committed."""
    return store.write_shard("samples", index, samples_table(np.full((2, 2, 2, 1), index % 250, np.uint8), index, 0))


def committed_keys(store: ShardStore) -> set[str]:
    manifest = store.read_manifest()
    return set() if manifest is None else set(manifest.shards)


class Faults:
    """Make the n-th call of a store method raise, to crash a writer at a chosen point."""

    def __init__(self, monkeypatch, store: ShardStore, method: str, fail_at: int) -> None:
        self.calls, original = 0, getattr(store, method)

        def wrapped(*args, **kwargs):
            self.calls += 1
            if self.calls == fail_at:
                raise OSError(f"injected failure in {method} call {fail_at}")
            return original(*args, **kwargs)

        monkeypatch.setattr(store, method, wrapped)


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        return ShardStore(str(tmp_path / "run"))
    return ShardStore(f"memory://commit-log-{tmp_path.name}")


def test_a_commit_writes_one_small_object_whatever_the_run_size(store, monkeypatch):
    written: list[tuple[str, int]] = []
    original = store.write_text
    monkeypatch.setattr(store, "write_text", lambda rel, text: (written.append((rel, len(text.encode()))), original(rel, text))[1])
    manifest = Manifest(config=IDENTITY)
    committer = ManifestCommitter(store, manifest)  # no total: never snapshots on its own
    record = write(store, 0)
    for index in range(3000):
        before = len(written)
        committer.commit_records([record.__class__(**{**record.to_dict(), "index": index, "path": f"{KIND}/shard-{index:05d}.parquet"})])
        commit_writes = [w for w in written[before:] if w[0].startswith(f"{COMMITS_DIR}/0")]
        assert len(commit_writes) == 1 and commit_writes[0][1] <= 4096
    first, last = (max(size for rel, size in written[a:b] if rel.startswith(f"{COMMITS_DIR}/0")) for a, b in ((0, 100), (-100, None)))
    assert last <= first + 16  # the seq number grows a few digits' worth at most, never the payload
    assert any(rel.endswith(".jsonl") for rel, _ in written)  # compacted into segments along the way
    assert len(store.read_manifest().shards) == 3000


def test_readers_see_committed_shards_only(store):
    manifest = Manifest(config=IDENTITY)
    committer = ManifestCommitter(store, manifest)
    committer.commit_records([write(store, 0)])
    write(store, 1)  # on storage, never committed (a crash between the write and the commit)
    assert committed_keys(store) == {f"{KIND}/00000"}
    plan = plan_run(store, IDENTITY, shard_specs(6, 2, 0), KIND)
    assert store.list_indices(KIND) == [0]  # the uncommitted file was removed by the rerun
    assert [s.index for s in plan.pending] == [0, 1, 2]  # 0 has features only: no samples record yet


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_crash_during_compaction_loses_nothing(store, monkeypatch, fail_at):
    manifest = Manifest(config=IDENTITY)
    committer = ManifestCommitter(store, manifest)
    for index in range(5):
        committer.commit_records([write(store, index)])
    expected = committed_keys(store)
    method = "write_text" if fail_at <= 2 else "remove"  # 1: the segment, 2: the index, 3: deleting a loose commit
    Faults(monkeypatch, store, method, fail_at if fail_at <= 2 else 1)
    with pytest.raises(OSError, match="injected"):
        compact(store)
    monkeypatch.undo()
    assert committed_keys(store) == expected
    compact(store)  # and a later compaction finishes the job
    assert committed_keys(store) == expected
    assert not [n for n in store.list_names(COMMITS_DIR) if n.startswith("0")]


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_crash_while_writing_the_snapshot_loses_nothing(store, monkeypatch, fail_at):
    manifest = Manifest(config=IDENTITY)
    committer = ManifestCommitter(store, manifest)
    for index in range(4):
        committer.commit_records([write(store, index)])
    compact(store)
    committer.commit_records([write(store, 4)])
    expected = committed_keys(store)
    method = "write_text" if fail_at == 1 else "remove"  # 1: manifest.json itself, 2: removing the log it covers
    Faults(monkeypatch, store, method, 1)
    with pytest.raises(OSError, match="injected"):
        store.write_manifest(manifest)
    monkeypatch.undo()
    assert committed_keys(store) == expected
    store.write_manifest(store.read_manifest())
    assert committed_keys(store) == expected and store.list_names(COMMITS_DIR) == []
    assert set(json.loads(store.read_text("manifest.json"))["shards"]) == expected


def test_the_last_commit_of_a_run_writes_its_snapshot(store):
    manifest = Manifest(config=IDENTITY)
    committer = ManifestCommitter(store, manifest, total=2)
    for index in range(2):
        committer.commit_records([write(store, index), write_samples(store, index)])
    raw = json.loads(store.read_text("manifest.json"))
    assert set(raw["shards"]) == {f"{KIND}/00000", f"{KIND}/00001", "samples/00000", "samples/00001"}
    assert store.list_names(COMMITS_DIR) == []  # folded into the snapshot


def test_resume_reads_no_shard_bytes(store, monkeypatch):
    specs = shard_specs(6, 2, 0)
    manifest = Manifest(config=IDENTITY)
    committer = ManifestCommitter(store, manifest)
    for spec in specs:
        committer.commit_records([write(store, spec.index), write_samples(store, spec.index)])
    reads: list[str] = []
    original = store._get
    monkeypatch.setattr(store, "_get", lambda rel: (reads.append(rel), original(rel))[1])
    monkeypatch.setattr(store, "verify", lambda record: pytest.fail("resume verified shard bytes"))
    plan = plan_run(store, IDENTITY, specs, KIND)
    assert len(plan.pending) == 0
    assert not [r for r in reads if r.endswith(".parquet")], reads  # only the manifest and commits are read


def test_resume_regenerates_a_missing_or_resized_shard(store):
    specs = shard_specs(6, 2, 0)
    manifest = Manifest(config=IDENTITY)
    committer = ManifestCommitter(store, manifest)
    for spec in specs:
        committer.commit_records([write(store, spec.index), write_samples(store, spec.index)])
    store.delete(KIND, 1)
    path = store.shard_path("samples", 2)
    store.fs.pipe_file(path, store.fs.cat_file(path)[:-3])  # truncated
    plan = plan_run(store, IDENTITY, specs, KIND)
    assert [s.index for s in plan.pending] == [1, 2]


def test_verify_names_a_flipped_byte_and_a_missing_shard_and_repair_replans_them(store):
    specs = shard_specs(6, 2, 0)
    manifest = Manifest(config=IDENTITY)
    committer = ManifestCommitter(store, manifest)
    for spec in specs:
        committer.commit_records([write(store, spec.index), write_samples(store, spec.index)])
    path = store.shard_path(KIND, 0)
    data = bytearray(store.fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF  # same size: only reading the bytes finds it
    store.fs.pipe_file(path, bytes(data))
    store.delete("samples", 2)
    assert len(plan_run(store, IDENTITY, specs, KIND).pending) == 1  # a listing sees the missing one only
    report = verify_run(store, store.read_manifest(), workers=2)
    assert {b["shard"]: b["problem"] for b in report["bad"]}.keys() == {f"{KIND}/00000", "samples/00002"}
    assert "corrupt" in next(b["problem"] for b in report["bad"] if b["shard"] == f"{KIND}/00000")
    assert report["checked"] == 6 and not report["repaired"]
    repaired = verify_run(store, store.read_manifest(), repair=True)
    assert repaired["repaired"]
    assert [s.index for s in plan_run(store, IDENTITY, specs, KIND).pending] == [0, 2]
    assert verify_run(store, store.read_manifest())["bad"] == []


def test_a_manifest_written_before_the_commit_log_reads_and_resumes(store):
    """manifest.json as the previous version wrote it: records inline, no snapshot_seq."""
    records = [write(store, i) for i in range(2)]
    old = {
        "config": IDENTITY, "code_version": "0.1.0", "created": "2026-11-30T10:00:00+00:00", "updated": "2026-11-30T10:00:00+00:00",
        "config_hash": Manifest(config=IDENTITY).config_hash, "shards": {r.key: r.to_dict() for r in records},
    }
    store.write_text("manifest.json", json.dumps(old, indent=2, sort_keys=True) + "\n")
    manifest = store.read_manifest()
    assert set(manifest.shards) == {r.key for r in records} and manifest.snapshot_seq == 0
    ManifestCommitter(store, manifest).commit_records([write(store, 2)])
    assert committed_keys(store) == {f"{KIND}/0000{i}" for i in range(3)}
    store.write_manifest(store.read_manifest())
    assert set(json.loads(store.read_text("manifest.json"))["shards"]) == {f"{KIND}/0000{i}" for i in range(3)}


def test_two_writers_never_overwrite_each_others_commits(store):
    first, second = Manifest(config=IDENTITY), Manifest(config=IDENTITY)
    ManifestCommitter(store, first).commit_records([write(store, 0)])
    second = store.read_manifest()
    ManifestCommitter(store, first).commit_records([write(store, 1)])  # both at the same next seq
    ManifestCommitter(store, second).commit_records([write(store, 2)])
    assert committed_keys(store) == {f"{KIND}/00000", f"{KIND}/00001", f"{KIND}/00002"}
    store.write_manifest(first)  # a snapshot merges what the other writer committed
    assert committed_keys(store) == {f"{KIND}/00000", f"{KIND}/00001", f"{KIND}/00002"}


def test_a_corrupt_commit_index_is_a_one_line_error(store):
    ManifestCommitter(store, Manifest(config=IDENTITY)).commit_records([write(store, 0)])
    compact(store)
    store.write_text(INDEX_NAME, "{not json")
    with pytest.raises(Exception, match="is not a commit index") as info:
        store.read_manifest()
    assert "\n" not in str(info.value)
