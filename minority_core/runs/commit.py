"""Committing shards: a shard is part of a run once its records are in the run's commit log.

Workers only write shard files; the driver commits their records. A commit is one small write
whatever the run's size (io/commit_log.py); every `COMPACT_EVERY` commits the loose commits are
folded into a segment, and `finish()` writes the whole manifest once, as the run's snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from minority_core.io import Manifest, ShardRecord, ShardStore
from minority_core.io.commit_log import COMPACT_EVERY
from minority_core.runs.plan import SAMPLES, remove_uncommitted

if TYPE_CHECKING:
    from minority_core.runs.worker import ShardResult

LOG = logging.getLogger(__name__)


class ManifestCommitter:
    """Adds finished shards to the manifest and stores it atomically; thread-safe.

    Commits cost one small write each; the snapshot is written once, when the `total`-th samples
    shard commits (or on `finish()`). `close()` ends a failed run: later commits are dropped, so the manifest stays as it was when
    the failure was seen, and `discard_uncommitted` can remove every shard file it does not list.
    `on_commit(done, total)` reports progress (e.g. to a Prefect progress artifact).
    """

    def __init__(self, store: ShardStore, manifest: Manifest, total: int | None = None, on_commit: Callable[[int, int], None] | None = None) -> None:
        self.store, self.manifest, self.total, self.on_commit = store, manifest, total, on_commit
        self.lock = threading.Lock()
        self.closed = False
        self.samples = manifest.committed(SAMPLES)  # kept up to date here: counting the manifest per commit is O(shards)
        self.loose = 0

    def committed_count(self) -> int:
        return len(self.samples)

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def commit(self, result: ShardResult) -> int:
        """Commit one finished shard (its features, then samples record); returns the committed count."""
        return self.commit_records([r for r in (result.features, result.samples) if r is not None])

    def commit_records(self, records: list[ShardRecord]) -> int:
        """Commit records written by any writer of this run (a shard's samples and features, a
        scores shard); returns the committed count of samples shards."""
        with self.lock:
            if self.closed:
                return self.committed_count()
            self.store.commit(self.manifest, records)  # the manifest in memory follows only once the commit landed
            self.samples.update(r.index for r in records if r.kind == SAMPLES)
            self.loose += 1
            done = self.committed_count()
            if self.total and done == self.total:  # the run is complete: store its snapshot once
                self.store.write_manifest(self.manifest)
                self.loose = 0
            elif self.loose >= COMPACT_EVERY:
                self.store.compact()
                self.loose = 0
        if self.on_commit is not None and self.total:
            self.on_commit(done, self.total)
        return done

    def finish(self) -> None:
        """This writer is done (e.g. scoring): store the whole manifest once, as the snapshot.
        A synthesis committer does it by itself when its last shard commits."""
        with self.lock:
            self.store.write_manifest(self.manifest)

    def discard_uncommitted(self, kinds: Iterable[str], logger: logging.Logger | logging.LoggerAdapter = LOG) -> None:
        """After a failure (call `close()` first and let in-flight shards end): remove the shard
        files the manifest does not list, so a failed run leaves only committed, verified shards.
        Best effort: the run's own error is what the caller must see."""
        try:
            stored = self.store.read_manifest()  # a manifest write that raised may still have landed: keep what it lists
            if stored is not None:
                for record in stored.shards.values():
                    if record.key not in self.manifest.shards:
                        self.manifest.add(record)
            removed = remove_uncommitted(self.store, self.manifest, kinds)
            if removed:
                logger.warning("run failed: removed %d uncommitted shard file(s): %s", len(removed), ", ".join(removed))
        except Exception as exc:
            logger.warning("run failed; uncommitted shard files may remain until the next run (%s)", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
