"""One writer per output: a lease taken before the first write, renewed while the writer lives.

The lease is `OUT/leases/<generation:012d>.json` (owner, host, pid, purpose, expiry), created
with an exclusive create (`O_EXCL` on local disks, `If-None-Match: *` on S3, the same on
memory://), so of two writers racing for a generation exactly one gets it. The holder is the
newest generation whose expiry has not passed (and, on the same machine, whose process still
exists: a killed run is rerun at once). A lease whose holder died is taken over by creating the
next generation, again exclusively, so two writers taking over a stale lease cannot both win.

The holder renews its file every RENEW_EVERY_S; a renewal that finds a newer generation, or a
holder that could not renew before its own expiry (storage down, process stalled), has lost the
lease, and `check()` (called by every commit) then raises: a writer that lost its lease cannot
commit. Checking costs no I/O; renewing is one read and one small write every 15 s. Expiry is
wall-clock time: writers on machines whose clocks differ by more than a fraction of TTL_S
could misjudge a stale lease.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from minority_core.errors import LeaseHeldError, LeaseLostError

if TYPE_CHECKING:
    from minority_core.io.store import ShardStore

LEASE_DIR = "leases"
_HELD: dict[str, Lease] = {}  # the leases this process holds, by store URL
_HELD_LOCK = threading.Lock()
_GIVEN_BACK: set[str] = set()  # owners of leases this process released but could not delete (storage down)
TTL_S = 60.0  # a lease not renewed for this long is stale: its holder is taken to be dead
RENEW_EVERY_S = 15.0


@dataclass
class Lease:
    """The lease a writer holds on one store; `release()` (or the context manager) gives it back."""

    store: ShardStore
    generation: int
    record: dict[str, Any]
    ttl_s: float = TTL_S
    lost: str | None = None  # why, once lost
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    users: int = 1  # this process's holders of it (a synthesize run scoring its own output borrows its lease)

    @classmethod
    def acquire(cls, store: ShardStore, purpose: str, ttl_s: float = TTL_S, renew_every_s: float = RENEW_EVERY_S) -> Lease:
        """Take the lease on `store` or fail at once, naming the holder (LeaseHeldError); one this
        process already holds is shared (re-entrant), so nested steps of one run do not collide."""
        key = store.fs.unstrip_protocol(store.root)
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is not None and held.lost is None:
                held.users += 1
                return held
            lease = cls._take(store, purpose, ttl_s, renew_every_s)
            _HELD[key] = lease
            return lease

    @classmethod
    def _take(cls, store: ShardStore, purpose: str, ttl_s: float, renew_every_s: float) -> Lease:
        store.check_writable()  # an unwritable OUT is the store's one clear line, not a lease error
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        for _ in range(8):  # each lost race re-reads the newest generation
            current = newest(store)
            if current is not None and live(current[1]):
                raise LeaseHeldError(describe_holder(store, current[1]))
            generation = current[0] + 1 if current else 0
            record = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose,
                      "acquired": time.time(), "expires": time.time() + ttl_s}
            try:
                _create(store, generation, record)
            except FileExistsError:
                if (store.read_text(_name(generation)) or "").find(owner) < 0:
                    continue  # another writer's: re-read the newest
                # else ours: a retried create whose first attempt landed
            lease = cls(store, generation, record, ttl_s)
            lease._forget_older()
            lease._start(renew_every_s)
            return lease
        current = newest(store)
        raise LeaseHeldError(describe_holder(store, current[1]) if current else f"could not take the lease on {store.url}: retry")

    def check(self) -> None:
        """Raise LeaseLostError unless this writer still holds the lease (no I/O)."""
        if self.lost is None and time.time() > self.record["expires"]:
            self.lost = f"not renewed since {time.ctime(self.record['expires'] - self.ttl_s)} (storage unreachable?)"
        if self.lost is not None:
            raise LeaseLostError(f"lost the write lease on {self.store.url} ({self.lost}): this run stops without committing more; "
                                 "rerun the same command to resume once no other writer holds it")

    def renew(self) -> None:
        """Extend the expiry, unless it already passed (another writer may have taken over and
        finished meanwhile, leaving no file to see) or another writer's file is the newest."""
        current = newest(self.store)
        if current is not None and (current[0] != self.generation or current[1].get("owner") != self.record["owner"]):
            self.lost = f"taken over by {current[1].get('owner')}"
            return
        if time.time() > self.record["expires"] or current is None:
            self.lost = f"not renewed since {time.ctime(self.record['expires'] - self.ttl_s)} (stalled, or storage unreachable)"
            return
        record = {**self.record, "expires": time.time() + self.ttl_s}
        self.store.write_text(_name(self.generation), json.dumps(record))
        self.record = record

    def release(self) -> None:
        """Stop renewing and remove the lease (and `leases/`, and OUT if nothing else is there),
        once its last user in this process releases it."""
        with _HELD_LOCK:
            self.users -= 1
            if self.users > 0:
                return
            key = self.store.fs.unstrip_protocol(self.store.root)
            if _HELD.get(key) is self:
                del _HELD[key]
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            if self.lost is None:
                self.store.remove(_name(self.generation))
            self.store.remove_empty_dirs(LEASE_DIR)
        except Exception:  # storage down (the run's own error says so): the file outlives its holder, whom
            _GIVEN_BACK.add(self.record["owner"])  # this process must not wait for (its rerun here would, 60 s)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _start(self, every_s: float) -> None:
        def loop() -> None:
            while not self._stop.wait(every_s) and self.lost is None:
                try:
                    self.renew()
                except Exception:  # storage trouble: retried next round; `check` fails once expiry passes
                    continue

        self._thread = threading.Thread(target=loop, name=f"lease-{self.store.url}", daemon=True)
        self._thread.start()

    def _forget_older(self) -> None:
        """Delete the stale generations this lease replaced (best effort: newest() ignores them anyway)."""
        for name in self.store.list_names(LEASE_DIR):
            if name.endswith(".json") and name[:-5].isdigit() and int(name[:-5]) < self.generation:
                self.store.remove(f"{LEASE_DIR}/{name}")


def newest(store: ShardStore) -> tuple[int, dict[str, Any]] | None:
    """(generation, record) of the newest lease file, None when there is none."""
    generations = sorted(int(n[:-5]) for n in store.list_names(LEASE_DIR) if n.endswith(".json") and n[:-5].isdigit())
    for generation in reversed(generations):
        text = store.read_text(_name(generation))
        if text:
            return generation, json.loads(text)
    return None


def live(record: dict[str, Any]) -> bool:
    """Whether a lease's holder may still be writing: not expired, and, on this machine, its
    process still exists (a killed run's lease is free at once, not after TTL_S)."""
    if record["expires"] <= time.time() or record.get("owner") in _GIVEN_BACK:
        return False
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
        try:
            os.kill(record["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: alive
            return True
    return True


def describe_holder(store: ShardStore, record: dict[str, Any]) -> str:
    left = max(0.0, record["expires"] - time.time())
    return (f"{store.url} is being written by another {record.get('purpose', 'writer')} ({record.get('owner')}, pid {record.get('pid')} on "
            f"{record.get('host')}, since {time.ctime(record.get('acquired', 0))}): wait for it to finish, or write to another --out; "
            f"if that process is dead its lease expires in {left:.0f} s")


def _name(generation: int) -> str:
    return f"{LEASE_DIR}/{generation:012d}.json"


def _create(store: ShardStore, generation: int, record: dict[str, Any]) -> None:
    """Create the generation's file only if it does not exist (FileExistsError otherwise)."""
    store.create_exclusive(_name(generation), json.dumps(record).encode())


def wait_released(store: ShardStore, timeout_s: float, every_s: float = 2.0) -> bool:
    """Wait until no live lease is held on `store` (its writer finished or died); True if so in time."""
    deadline = time.monotonic() + timeout_s
    while (current := newest(store)) is not None and live(current[1]):
        if time.monotonic() > deadline:
            return False
        time.sleep(every_s)
    return True
