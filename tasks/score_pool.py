"""Score actors: `ScoreWorker`s (minority_core.runs.scoring) as Ray actors, one shard per call.

Each actor loads the reference set once and takes `num_cpus=1`, so Ray gives it one OMP thread
and the actors of a pool score side by side. `scored` keeps each actor busy with one shard and at
most `QUEUED_PER_ACTOR` more queued in the driver, so the driver holds a few records whatever
the run's size, and one thread per actor (never one per shard). `workers=0` scores in-process,
for memory:// runs (per process) and tests.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from minority_core.errors import UserError
from minority_core.io import ShardRecord
from minority_core.runs.scoring import ScoreWorker
from tasks.ray_pool import call, ensure_ray

ACTOR_MAX_RESTARTS = -1  # a crashed actor restarts (reloading the reference set); Ray retries its call
ACTOR_MAX_TASK_RETRIES = 4
SHARD_ATTEMPTS = 2  # a shard that fails with an error that is not the user's gets one more try
QUEUED_PER_ACTOR = 1  # shards waiting in the driver per actor, so an actor never waits for the next one

LOG = logging.getLogger(__name__)


class ScorePool:
    """`workers` ScoreWorker actors (capped at the CPUs the Ray cluster has), or one in-process
    worker for `workers=0`."""

    def __init__(self, worker_kwargs: dict, workers: int, ray_address: str | None = None) -> None:
        self.actors: list[object] = []
        self.in_process = workers == 0
        if self.in_process:
            self.actors = [ScoreWorker(**worker_kwargs)]
            call(self.actors[0], "ping")
            return
        import ray

        ensure_ray(ray_address, num_cpus=workers if not ray_address else None)
        count = max(1, min(workers, int(ray.cluster_resources().get("CPU", 1))))  # more would wait for a CPU forever
        actor_class = ray.remote(max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=ACTOR_MAX_TASK_RETRIES)(ScoreWorker)
        self.actors = [actor_class.options(num_cpus=1).remote(**worker_kwargs) for _ in range(count)]
        try:
            for actor in self.actors:  # they load in parallel; a start-up error comes back as itself
                call(actor, "ping")
        except BaseException:
            self.shutdown()
            raise

    def scored(self, records: Iterable[ShardRecord]) -> Iterator[ShardRecord]:
        """Score `records` on the actors; yields each scores record as its shard finishes (in any
        order). Stops at the first shard that fails for good, raising its error."""
        if self.in_process:
            for record in records:
                yield self._score(self.actors[0], record)
            return
        idle: queue.Queue = queue.Queue()
        for actor in self.actors:
            idle.put(actor)

        def lane(record: ShardRecord) -> ShardRecord:
            actor = idle.get()
            try:
                return self._score(actor, record)
            finally:
                idle.put(actor)

        todo = iter(records)
        window = len(self.actors) * (1 + QUEUED_PER_ACTOR)
        with ThreadPoolExecutor(max_workers=len(self.actors), thread_name_prefix="score-lane") as lanes:
            pending: set[Future] = set()
            try:
                while True:
                    for record in todo:
                        pending.add(lanes.submit(lane, record))
                        if len(pending) >= window:
                            break
                    if not pending:
                        return
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
            finally:
                for future in pending:  # a failure (or the caller stopping): queued shards never start
                    future.cancel()

    def _score(self, actor: object, record: ShardRecord) -> ShardRecord:
        """One shard, retried once unless the error is the user's to fix; the error names the shard."""
        attempt = 1
        while True:
            try:
                return call(actor, "score_shard", record)
            except UserError as err:
                raise type(err)(f"scoring {record.path}: {err}") from err
            except Exception as err:
                if attempt >= SHARD_ATTEMPTS:
                    err.add_note(f"while scoring {record.path} (attempt {attempt} of {SHARD_ATTEMPTS})")
                    raise
                LOG.warning("scoring %s failed (%s); trying once more", record.path, err)
                attempt += 1

    def shutdown(self) -> None:
        if not self.in_process and self.actors:
            import ray

            for actor in self.actors:
                ray.kill(actor, no_restart=True)
        self.actors = []
