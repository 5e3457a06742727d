"""Prefect tasks of a synthesis run: thin wrappers over minority_core.runs and the actor pool.

A run is a few task runs, not one per shard: `plan-shards`, then one `generate-lane` per actor.
Each lane owns an actor and pulls shard specs from the run's `ShardQueue` until it is empty;
a shard that fails transiently goes back to the queue and is retried alone (per shard, as a
task's `retries=2` would), so the Prefect API's load does not grow with the shard count. A
lane whose actor went with its Ray node puts its shards back and ends: the run goes on with
the others (and with a new lane where the cluster grows back).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.artifacts import update_progress_artifact
from prefect.cache_policies import NO_CACHE

from minority_core.config import SynthesisConfig
from minority_core.errors import NonFiniteSampleError, one_line
from minority_core.io import ShardStore
from minority_core.runs.commit import ManifestCommitter
from minority_core.runs.plan import Plan, ShardSpec, ShardSpecs, pending_shards, plan_run, shard_specs
from minority_core.runs.worker import ShardResult
from tasks.ray_pool import ActorLostError, Call, ClusterLostError, submit

SHARD_RETRIES = 2  # after a crash or a storage outage; each shard has its own count
SHARD_RETRY_DELAY_S = 2.0
PIPELINE_BELOW_S = 1.0  # a shard shorter than this gets the next one queued behind it on its actor
PROGRESS_EVERY_S = 1.0  # the progress artifact is a synchronous API call: at most this often, plus at the end
LOG_EVERY_S = 30.0  # an info line with the committed count; per-shard lines are debug only


def open_store(config: SynthesisConfig) -> ShardStore:
    return ShardStore(config.output.out, config.full_storage_options())


def features_kind(config: SynthesisConfig) -> str:
    return f"features/{config.output.extractor}"


@task(name="plan-shards", cache_policy=NO_CACHE, persist_result=False)
def plan_shards(config: SynthesisConfig) -> Plan:
    """Split the run into shards and find what is already committed (see `minority_core.runs.plan`)."""
    o = config.output
    return plan_run(open_store(config), config.output_identity(), shard_specs(o.num_samples, o.shard_size, o.seed),
                    features_kind(config), overwrite=o.overwrite, logger=get_run_logger())


def plan_missing(config: SynthesisConfig, store: ShardStore, manifest) -> ShardSpecs:
    """The run's shards whose committed files are not on storage at their recorded sizes (one
    listing per kind, no bytes read), forgotten in `manifest` so that they are made again."""
    o = config.output
    return pending_shards(store, manifest, shard_specs(o.num_samples, o.shard_size, o.seed), features_kind(config), get_run_logger())


class Progress:
    """`on_commit` for the committer: the run's live progress at a bounded rate. The Prefect
    progress artifact at most once per `PROGRESS_EVERY_S` (a synchronous API call), an info line
    per `LOG_EVERY_S`, the tqdm `bar` on every commit; `finish()` brings them up to date at the
    end. Best effort: the commit has landed when it is called, so a failed update fails no shard."""

    def __init__(self, artifact_id, total: int, done: int, logger: logging.Logger | logging.LoggerAdapter, bar=None) -> None:
        self.artifact_id, self.total, self.logger, self.bar = artifact_id, total, logger, bar
        self.lock, self.sending = threading.Lock(), threading.Lock()  # counts; artifact updates one at a time, in order
        self.done = self.reported = self.initial = done
        self.started = time.monotonic()
        self.next_update, self.next_log = self.started + PROGRESS_EVERY_S, self.started + LOG_EVERY_S

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        with self.lock:
            if done <= self.done:
                return
            if self.bar is not None:
                self.bar.update(done - self.done)
            self.done = done
            update, log = now >= self.next_update, now >= self.next_log
            if update:
                self.next_update = now + PROGRESS_EVERY_S
            if log:
                self.next_log = now + LOG_EVERY_S
        if update:
            self._update_artifact()
        if log:
            self.logger.info("%d/%d shards committed (%.1f shards/s)", done, total, (done - self.initial) / max(now - self.started, 1e-9))

    def finish(self, done: int) -> None:
        with self.lock:
            if self.bar is not None and done > self.done:
                self.bar.update(done - self.done)
            self.done = max(self.done, done)
        self._update_artifact()

    def _update_artifact(self) -> None:
        with self.sending:
            with self.lock:
                done = self.done
            if done == self.reported:
                return
            try:
                update_progress_artifact(self.artifact_id, 100.0 * done / self.total)
                self.reported = done
            except Exception as exc:
                self.logger.warning("progress artifact not updated (%s)", one_line(exc))


def worth_retrying(error: BaseException) -> bool:
    """Retry a shard after a crash or a storage outage, not after a failure its seed will repeat."""
    return not isinstance(error, (NonFiniteSampleError, ValueError))  # same seed, same config: the same error again


def name_shard(error: BaseException, index: int) -> None:
    """Make the error say which shard failed: in its one-line message where it has a plain one, else in a note."""
    label = f"shard {index:05d}"
    if len(error.args) == 1 and isinstance(error.args[0], str) and str(error) == error.args[0]:
        if not error.args[0].startswith(label):
            error.args = (f"{label}: {error.args[0]}",)
    else:
        error.add_note(f"while generating {label}")


class ShardQueue:
    """The shards a run still has to make, shared by its lanes; thread-safe.

    A shard that failed transiently comes back after `SHARD_RETRY_DELAY_S` (before any new one)
    until it has used its `SHARD_RETRIES`; one whose actor went with its node comes back at once
    (`put_back`), without using a retry. `stop()` ends a failed run: lanes take nothing more.
    """

    def __init__(self, specs: Sequence[ShardSpec]) -> None:
        self._specs, self._next = specs, 0  # taken in order by position: a lazy plan stays lazy
        self._waiting: list[tuple[float, int, ShardSpec]] = []  # (not before, order, spec): a heap
        self._order = itertools.count()
        self._failures: dict[int, int] = {}
        self._cond = threading.Condition()
        self.stopped = False

    def take(self, wait: bool) -> ShardSpec | None:
        """The next shard to make; None when there is none (yet, if not `wait`) or the run stopped.
        With `wait`, a shard waiting out its retry delay is waited for."""
        with self._cond:
            while not self.stopped:
                now = time.monotonic()
                if self._waiting and self._waiting[0][0] <= now:
                    return heapq.heappop(self._waiting)[2]
                if self._next < len(self._specs):
                    self._next += 1
                    return self._specs[self._next - 1]
                if not wait or not self._waiting:
                    return None
                self._cond.wait(self._waiting[0][0] - now)
            return None

    def failed(self, spec: ShardSpec, error: BaseException) -> int | None:
        """Record a failure of `spec`: its retry number if it goes back to the queue, else None."""
        with self._cond:
            attempt = self._failures[spec.index] = self._failures.get(spec.index, 0) + 1
            if self.stopped or attempt > SHARD_RETRIES or not worth_retrying(error):
                return None
            heapq.heappush(self._waiting, (time.monotonic() + SHARD_RETRY_DELAY_S, next(self._order), spec))
            self._cond.notify_all()
            return attempt

    def put_back(self, spec: ShardSpec) -> None:
        """`spec` was lost with its actor, through no fault of its own: next in line for any lane."""
        with self._cond:
            heapq.heappush(self._waiting, (time.monotonic(), next(self._order), spec))
            self._cond.notify_all()

    def remaining(self) -> int:
        """Shards no lane holds yet: never taken, or back in the queue (to retry, or put back)."""
        with self._cond:
            return 0 if self.stopped else len(self._specs) - self._next + len(self._waiting)

    def stop(self) -> None:
        with self._cond:
            self.stopped = True
            self._cond.notify_all()


@dataclass
class LaneTotals:
    """What a lane generated: its shards, their rows and their seconds in the worker."""

    shards: int = 0
    rows: int = 0
    seconds: float = 0.0

    def add(self, result: ShardResult) -> None:
        self.shards += 1
        self.rows += result.samples.rows
        self.seconds += result.seconds

    def merge(self, other: LaneTotals) -> None:
        self.shards += other.shards
        self.rows += other.rows
        self.seconds += other.seconds


@task(name="generate-lane", task_run_name="lane-{lane:02d}", cache_policy=NO_CACHE, persist_result=False)
def generate_lane(pool, lane: int, work: ShardQueue, committer: ManifestCommitter) -> LaneTotals:
    """Generate shards from `work` on one borrowed actor, committing each, until none is left.

    Calls are pipelined on a Ray actor when shards are short: the next one waits on the actor
    while the driver commits this one. A failure after its retries stops the run and is raised
    naming its shard; a lane whose run was stopped elsewhere just ends, and so does a lane whose
    actor went with its node, after putting its shards back for the others.
    """
    logger = get_run_logger()
    totals = LaneTotals()
    depth = 1
    in_flight: deque[tuple[ShardSpec, Call]] = deque()
    with pool.borrow() as actor:
        while True:
            while len(in_flight) < depth and (spec := work.take(wait=not in_flight)) is not None:
                in_flight.append((spec, submit(actor, "generate_shard", spec.index, spec.rows, spec.seed, spec.first_index)))
            if not in_flight:
                return totals
            spec, pending = in_flight.popleft()
            try:
                result = pool.result(actor, pending)
                done = committer.commit(result)
            except ActorLostError as lost:  # gone with its node: its shards go to the other lanes, and this lane ends
                lost_specs = [spec, *(s for s, _ in in_flight)]
                for s in lost_specs:
                    work.put_back(s)
                pool.discard(actor)
                if not work.stopped:
                    logger.warning("lane %02d: %s; shard %s back in the queue", lane, lost, ", ".join(f"{s.index:05d}" for s in lost_specs))
                return totals
            except ClusterLostError:
                work.stop()
                raise
            except Exception as error:
                if work.stopped:  # the run failed elsewhere (its actors are being shut down): not this shard's error
                    return totals
                retry = work.failed(spec, error)
                if retry is None:
                    work.stop()
                    logger.error("shard %05d failed: %s", spec.index, one_line(error))
                    name_shard(error, spec.index)
                    raise
                logger.warning("shard %05d failed (%s); Retry %d/%d in %.0f s", spec.index, one_line(error), retry, SHARD_RETRIES, SHARD_RETRY_DELAY_S)
                continue
            totals.add(result)
            depth = 2 if pool.pipelined and result.seconds < PIPELINE_BELOW_S else 1
            logger.debug("shard %05d: %d rows in %.2f s (%d/%d committed)", spec.index, spec.rows, result.seconds, done, committer.total)
