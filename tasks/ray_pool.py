"""A pool of ShardWorker Ray actors that keeps every actor busy.

One actor per GPU (`num_gpus=1`) where Ray sees GPUs, else `workers` CPU actors (`num_cpus=1`,
so Ray pins each to one OMP thread and their results do not depend on the pool size). Actors
restart after a crash and Ray retries the interrupted call (writes are idempotent: same seed,
same bytes, atomic commit). A lane of the synthesis flow borrows one idle actor for its life and
may queue a second call behind the running one (`pipelined`), so the actor never waits for the
driver between two short shards.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from contextlib import contextmanager

from minority_core.errors import InputError
from minority_core.runs.worker import ShardWorker

ACTOR_MAX_RESTARTS = -1  # always restart: a budget per actor would let a long run die after a few crashes
ACTOR_MAX_TASK_RETRIES = 4  # per call, so a shard that crashes its actor every time still fails in bounded time


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start local Ray (or connect to `address` / $RAY_ADDRESS) once per process, from the main thread."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    if address is None:
        kwargs["num_cpus"] = num_cpus or os.cpu_count()
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise InputError(f"could not connect to the Ray cluster at {address!r}: {str(exc).splitlines()[0]}") from None


class ActorPool:
    """Idle actors in a queue; `borrow()` blocks until one is free."""

    pipelined = True  # an actor runs its calls in order: the next one may wait on the actor, not in the driver

    def __init__(self, worker_kwargs: dict, workers: int, ray_address: str | None = None) -> None:
        import ray

        ensure_ray(ray_address, num_cpus=max(workers, 1) if not ray_address else None)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus > 0:
            resources = {"num_gpus": 1, "num_cpus": 1}
            count = gpus
            worker_kwargs = {**worker_kwargs, "device": "cuda"}
        else:
            resources = {"num_cpus": 1}
            count = max(1, workers)
        actor_class = ray.remote(max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=ACTOR_MAX_TASK_RETRIES)(ShardWorker)
        self.actors = [actor_class.options(**resources).remote(**worker_kwargs) for _ in range(count)]
        try:
            for actor in self.actors:  # they start in parallel; a start-up error (bad model, labels, GPU) comes back as itself
                call(actor, "ping")
        except BaseException:
            self.shutdown()
            raise
        self.idle: queue.Queue = queue.Queue()
        for actor in self.actors:
            self.idle.put(actor)

    @contextmanager
    def borrow(self) -> Iterator[object]:
        actor = self.idle.get()
        try:
            yield actor
        finally:
            self.idle.put(actor)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


class InProcessPool:
    """`workers = 0`: one ShardWorker in this process (no Ray) — for memory:// and the baseline."""

    pipelined = False  # a local call runs when it is made: queuing a second one would only delay the first commit

    def __init__(self, worker_kwargs: dict) -> None:
        self.worker = ShardWorker(**worker_kwargs)
        self.worker.ping()  # its start-up error, if any
        self.actors = [self.worker]

    @contextmanager
    def borrow(self) -> Iterator[object]:
        yield self.worker

    def shutdown(self) -> None:
        pass


class Call:
    """A worker call made with `submit`: `result()` waits for it and returns its value or raises
    the worker's own error (StorageError, NonFiniteSampleError, ...), not Ray's wrapper."""

    def __init__(self, ref: object = None, value: object = None, error: BaseException | None = None) -> None:
        self._ref, self._value, self._error = ref, value, error

    def result(self):
        if self._error is not None:
            raise self._error
        if self._ref is None:
            return self._value
        import ray

        try:
            return ray.get(self._ref)
        except ray.exceptions.RayTaskError as err:
            # the worker's one-line message, not Ray's wrapper whose text starts with the remote
            # traceback; that stays chained
            if isinstance(err.cause, Exception):
                raise err.cause from err
            raise


def submit(actor: object, method: str, *args) -> Call:
    """Start a worker method on a Ray actor (returns at once) or run it on a local worker."""
    fn = getattr(actor, method)
    if hasattr(fn, "remote"):
        return Call(ref=fn.remote(*args))
    try:
        return Call(value=fn(*args))
    except Exception as exc:  # raised by result(), as a Ray call's would be
        return Call(error=exc)


def call(actor: object, method: str, *args):
    """Call a worker method on a Ray actor or a local worker alike, and wait for it."""
    return submit(actor, method, *args).result()
