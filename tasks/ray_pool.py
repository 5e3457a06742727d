"""A pool of ShardWorker Ray actors that keeps every actor busy and survives losing nodes.

One actor per GPU (`num_gpus=1`) where Ray sees GPUs, else `workers` CPU actors (`num_cpus=1`,
one OMP/MKL thread each whatever the node's environment says, so a shard's bytes do not depend
on the node or the pool size). A lane of the synthesis flow borrows one idle actor for its life
and may queue a second call behind the running one (`pipelined`).

Failures, by where they happen:
- an actor crashes on a live node: Ray restarts it and retries the call (writes are idempotent:
  same seed, same bytes, atomic commit);
- an actor goes with its node (Ray reports it dead, or it is not alive, its node is gone and
  the cluster has no room to restart it): `result` raises `ActorLostError`, the lane puts its
  shards back and ends, the pool shrinks; `grow` starts a new actor once the cluster has room;
- the head stops answering: `ClusterLostError` (one line) within `CLUSTER_LOST_AFTER_S`. The
  actors on the other nodes exit by themselves when Ray's `gcs_rpc_server_reconnect_timeout_s`
  (60 s unless `RAY_gcs_rpc_server_reconnect_timeout_s` was set for `ray start`) runs out.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from minority_core.errors import InputError, UserError
from minority_core.runs.worker import ShardWorker
from tasks.ray_address import accepts, check_ray_address, ray_endpoint
from tasks.ray_private import start_private_ray

ACTOR_MAX_RESTARTS = -1  # always restart: a budget per actor would let a long run die after a few crashes
ACTOR_MAX_TASK_RETRIES = 4  # per call, so a shard that crashes its actor every time still fails in bounded time
# Each actor has one CPU: one thread, also where the raylet's environment asks for more.
ACTOR_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
HEALTH_EVERY_S = 2.0  # how often a lane waiting on its actor looks at the actor and the cluster
# An actor not alive while the cluster has no room to restart it, this long: lost, and sooner
# where the node it lived on is gone too.
NODE_LOST_AFTER_S = 10.0
ACTOR_LOST_AFTER_S = 120.0
CLUSTER_LOST_AFTER_S = 10.0  # the head's GCS port refusing connections this long: the cluster is gone
GCS_CALL_TIMEOUT_S = 5.0  # a query of the cluster's state that takes longer is treated as unanswered

LOG = logging.getLogger(__name__)


class ActorLostError(Exception):
    """The actor of a lane is gone for good (with its node): its shards go back to the queue."""


class ClusterLostError(UserError, RuntimeError):
    """The Ray cluster stopped answering, or every worker went with its node."""


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start local Ray (or connect to `address` / $RAY_ADDRESS) once per process, from the main thread."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    check_ray_address(address)
    kwargs = dict(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    if address is None:  # a new local instance even where `ray start` runs on this machine; joining a cluster takes --ray-address
        start_private_ray(num_cpus=num_cpus or os.cpu_count(), **kwargs)  # loopback only, token auth (tasks/ray_private.py)
        return
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise InputError(f"could not connect to the Ray cluster at {address!r}: {str(exc).splitlines()[0]}") from None


class _Outage:
    """Since when a condition has held without a break (None while it does not hold)."""

    def __init__(self) -> None:
        self.since: float | None = None

    def seen(self, holds: bool) -> float:
        """Record whether the condition holds now; return for how long it has held."""
        now = time.monotonic()
        if not holds:
            self.since = None
            return 0.0
        if self.since is None:
            self.since = now
        return now - self.since


class ActorPool:
    """Idle actors in a queue; `borrow()` blocks until one is free. `result` waits on a call as
    long as its actor lives; `discard` drops an actor that went with its node and `grow` starts
    a replacement once the cluster has room for it."""

    pipelined = True  # an actor runs its calls in order: the next one may wait on the actor, not in the driver

    def __init__(self, worker_kwargs: dict, workers: int, ray_address: str | None = None) -> None:
        import ray

        ensure_ray(ray_address, num_cpus=max(workers, 1) if not ray_address else None)
        self._head = head_endpoint()
        self._lock = threading.Lock()
        self._closed = False
        self._cluster_down = _Outage()
        self._homes: dict[str, str] = {}  # actor id → the node it was last seen alive on
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus > 0:
            self._needs = {"CPU": 1.0, "GPU": 1.0}
            self.target = gpus
            worker_kwargs = {**worker_kwargs, "device": "cuda"}
        else:
            self._needs = {"CPU": 1.0}
            cpus = int(ray.cluster_resources().get("CPU", 1))
            self.target = max(1, min(workers, cpus))  # more would wait for a CPU that is not there
            if self.target < workers:
                LOG.warning("the Ray cluster has %d CPUs: starting %d workers, not %d", cpus, self.target, workers)
        options = {"num_cpus": 1, "runtime_env": {"env_vars": ACTOR_ENV}}
        if "GPU" in self._needs:
            options["num_gpus"] = 1
        self._actor_class = ray.remote(max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=ACTOR_MAX_TASK_RETRIES)(ShardWorker).options(**options)
        self._worker_kwargs = worker_kwargs
        self.actors = [self._actor_class.remote(**worker_kwargs) for _ in range(self.target)]
        try:
            for actor in self.actors:  # they start in parallel; a start-up error (bad model, labels, GPU) comes back as itself
                self.result(actor, submit(actor, "ping"), patient=True)
        except ActorLostError as lost:
            self.shutdown()
            raise ClusterLostError(f"a Ray worker could not start: {lost}; check the cluster (`ray status`) and rerun") from None
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
            with self._lock:
                if actor in self.actors:  # a discarded actor does not come back
                    self.idle.put(actor)

    def result(self, actor: object, pending: Call, patient: bool = False):
        """`pending.result()`, checking on the actor and the cluster every `HEALTH_EVERY_S` while
        it runs. Raises `ActorLostError` where the actor went with its node (or the pool was shut
        down), `ClusterLostError` where the head stopped answering. `patient`: a new actor may
        wait for a busy cluster's CPUs as long as Ray makes it."""
        import ray

        if pending._ref is None:
            return pending.result()
        stuck = _Outage()
        while not ray.wait([pending._ref], timeout=HEALTH_EVERY_S)[0]:
            self._check(actor, stuck, patient)
        try:
            value = pending.result()
        except ray.exceptions.RayActorError as error:
            # Ray gave up on the call: the actor died past its restarts, or stayed unreachable
            # through the call's retries (its node may be gone, and Ray may not know yet)
            why = "the pool was shut down" if self._closed else self._recovers(actor)
            if why is not None:
                raise ActorLostError(f"{why} ({type(error).__name__} on its call)") from error
            raise  # it lives again: the shard's own retries decide
        if patient:  # a new actor: where it lives, for `_check`
            self._check(actor, stuck)
        return value

    def _recovers(self, actor: object) -> str | None:
        """Wait until the actor answers a ping again (None) or is lost (why)."""
        import ray

        stuck = _Outage()
        deadline = time.monotonic() + ACTOR_LOST_AFTER_S  # alive to the GCS, yet never answering, counts too
        while time.monotonic() < deadline:
            try:
                state = self._check(actor, stuck)
            except ActorLostError as lost:
                return str(lost)
            if state == "ALIVE":
                try:
                    ready = ray.wait([actor.ping.remote()], timeout=HEALTH_EVERY_S)[0]
                    if ready:
                        ray.get(ready[0])
                        return None
                except ray.exceptions.RayActorError:
                    pass
            else:
                time.sleep(HEALTH_EVERY_S)
        return f"actor {actor_name(actor)} has not answered for {ACTOR_LOST_AFTER_S:.0f} s"

    def _check(self, actor: object, stuck: _Outage, patient: bool = False) -> str | None:
        """Raise where waiting on `actor` has become pointless; else return its state.

        Lost: Ray says it is dead; or it is not alive and the cluster has no room to restart it,
        for `NODE_LOST_AFTER_S` where the node it lived on is gone, else `ACTOR_LOST_AFTER_S`
        (the bound for an actor restarting on a live node, whose own CPU it may be holding)."""
        if self._closed:
            raise ActorLostError("the pool was shut down")
        if self._head is not None:
            down = self._cluster_down.seen(not accepts(*self._head))
            if down >= CLUSTER_LOST_AFTER_S:
                raise ClusterLostError(f"lost the Ray cluster: its head ({self._head[0]}:{self._head[1]}) has refused connections for {down:.0f} s; "
                                       "restart it and rerun the same command to resume")
            if down:
                return None  # the GCS may be restarting: nothing it says now can be trusted, or waited for
        info = actor_info(actor)
        state = info.get("State") if info else None
        if state == "DEAD":
            raise ActorLostError(f"actor {actor_name(actor)} is dead")
        if state == "ALIVE":
            self._homes[actor_name(actor)] = (info.get("Address") or {}).get("NodeID", "")
        if state in ("ALIVE", None) or patient:
            stuck.seen(False)
            return state
        stuck_for = stuck.seen(not self._room())
        home = self._homes.get(actor_name(actor))
        if stuck_for >= NODE_LOST_AFTER_S and home and self._node_alive(home) is False:
            raise ActorLostError(f"actor {actor_name(actor)} went with its node {home[:12]} (the cluster has no room to restart it)")
        if stuck_for >= ACTOR_LOST_AFTER_S:
            raise ActorLostError(f"actor {actor_name(actor)} has been {state.lower()} for {stuck_for:.0f} s with no room in the cluster to restart it")
        return state

    def _node_alive(self, node_id: str) -> bool | None:
        """Whether the GCS counts that node alive (None where it cannot say)."""
        import ray

        nodes = bounded(ray.nodes)
        if nodes is None:
            return None
        return any(n.get("NodeID") == node_id and n.get("Alive") for n in nodes)

    def _room(self) -> bool:
        """Whether the cluster has free resources for one more actor (False where it cannot say)."""
        import ray

        free = bounded(ray.available_resources) or {}
        return all(free.get(name, 0.0) >= amount for name, amount in self._needs.items())

    def discard(self, actor: object) -> None:
        """Drop an actor that went with its node; killed so that it never comes back to take a CPU."""
        import ray

        with self._lock:
            if actor in self.actors:
                self.actors.remove(actor)
            if self._closed:
                return  # shutdown() killed it, or the head is gone (and a kill would wait on it)
        try:
            ray.kill(actor, no_restart=True)
        except Exception as exc:  # it is gone already, or Ray is
            LOG.debug("kill of a lost actor failed: %s", exc)

    def grow(self) -> object | None:
        """Start one more actor where the pool has shrunk below its size and the cluster has room
        again (a node joined); returns it, idle and ready, or None."""
        with self._lock:
            if self._closed or len(self.actors) >= self.target:
                return None
        if not self._room():
            return None
        actor = self._actor_class.remote(**self._worker_kwargs)
        try:
            self.result(actor, submit(actor, "ping"), patient=True)
        except (ActorLostError, ClusterLostError):
            self.discard(actor)
            return None
        with self._lock:
            if self._closed:
                self.discard(actor)
                return None
            self.actors.append(actor)
            self.idle.put(actor)
        return actor

    def shutdown(self) -> None:
        import ray

        with self._lock:
            self._closed = True
            actors, self.actors = self.actors, []
        if self._head is not None and not accepts(*self._head):
            return  # the head is gone and its actors with it, or soon (Ray's own reconnect timeout)
        for actor in actors:
            ray.kill(actor, no_restart=True)


def head_endpoint() -> tuple[str, int] | None:
    """(host, port) of the connected cluster's GCS; None where Ray does not say (Ray Client)."""
    import ray

    try:
        return ray_endpoint(ray.get_runtime_context().gcs_address)
    except Exception:
        return None


def bounded(fn, timeout: float = GCS_CALL_TIMEOUT_S):
    """`fn()`, or None where it raises or takes longer than `timeout`: a GCS query blocks for a
    minute once the head is gone, so it runs in a daemon thread that is left behind then."""
    box: list = []

    def run() -> None:
        try:
            box.append(fn())
        except Exception as exc:
            LOG.debug("GCS query failed: %s", exc)

    thread = threading.Thread(target=run, name="gcs-query", daemon=True)
    thread.start()
    thread.join(timeout)
    return box[0] if box else None


def actor_info(actor: object) -> dict | None:
    """The actor's entry in the GCS's actor table: its `State` (ALIVE, RESTARTING,
    PENDING_CREATION, DEPENDENCIES_UNREADY or DEAD) and `Address` (`NodeID`); None where it
    cannot be read in time. (`ray.util.state` would need the dashboard, which runs only where
    asked for.)"""
    from ray._private import state as ray_state

    return bounded(lambda: ray_state.actors(actor._actor_id.hex()))


def actor_name(actor: object) -> str:
    return actor._actor_id.hex()[:12]


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

    def result(self, actor: object, pending: Call):
        return pending.result()

    def discard(self, actor: object) -> None:
        pass

    def grow(self) -> object | None:
        return None

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
