"""One writer per output: the lease on real stores (local disk, memory://, moto S3), races, stale
takeover, a lost lease refusing commits, and two real `synthesize` processes on one OUT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from minority_core.errors import LeaseHeldError, LeaseLostError
from minority_core.io import ShardStore
from minority_core.io.lease import LEASE_DIR, Lease, newest

CLI = str(Path(sys.executable).with_name("minority-synth"))


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return ShardStore(str(tmp_path / "out"))
    if request.param == "memory":
        return ShardStore(f"memory://lease-{tmp_path.name}/out")
    bucket, options = request.getfixturevalue("s3_bucket")
    return ShardStore(f"{bucket}/out", options)


def test_a_second_writer_fails_at_once_naming_the_holder(store):
    with Lease.acquire(store, "synthesize") as lease:
        other = ShardStore(store.url, store.storage_options)  # another process's view: bypass this process's sharing
        with pytest.raises(LeaseHeldError) as refused:
            Lease._take(other, "score", 60.0, 15.0)
        message = str(refused.value)
        assert "\n" not in message and lease.record["owner"] in message and "another --out" in message
    assert newest(store) is None  # released


def test_racing_writers_exactly_one_wins(store):
    wins, losses, start = [], [], threading.Barrier(6)

    def contend() -> None:
        start.wait()
        try:
            wins.append(Lease._take(ShardStore(store.url, store.storage_options), "synthesize", 60.0, 15.0))
        except LeaseHeldError:
            losses.append(1)

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 5
    wins[0].users = 1
    wins[0].release()


def test_a_stale_lease_is_taken_over_and_its_holder_can_no_longer_commit(store):
    from minority_core.io import Manifest

    stale = Lease._take(store, "synthesize", ttl_s=0.5, renew_every_s=3600)  # never renews: as if its process froze
    time.sleep(0.7)
    other = ShardStore(store.url, store.storage_options)
    taker = Lease._take(other, "synthesize", 60.0, 15.0)
    assert taker.generation == stale.generation + 1
    assert [n for n in store.list_names(LEASE_DIR) if n.endswith(".json")] == [f"{taker.generation:012d}.json"]  # the stale file is gone
    stale.renew()  # the frozen writer wakes up: it sees the newer generation
    store.lease = stale
    with pytest.raises(LeaseLostError, match="taken over by"):
        store.commit(Manifest(config={"x": 1}, code_version="t"), [])
    assert not store.list_names("commits")  # nothing committed
    taker.users = 1
    taker.release()


def test_a_writer_that_cannot_renew_stops_committing_at_its_expiry(tmp_path):
    store = ShardStore(str(tmp_path / "out"))
    lease = Lease._take(store, "synthesize", ttl_s=0.3, renew_every_s=3600)
    lease.check()  # held
    time.sleep(0.4)
    with pytest.raises(LeaseLostError, match="not renewed"):
        lease.check()


def test_a_writer_waking_after_its_taker_finished_does_not_renew_its_way_back(tmp_path):
    """Stopped past its expiry, taken over, the taker done and gone (no lease file left): the
    woken writer's renewal must not re-create its lease (it did, and went on committing)."""
    store = ShardStore(str(tmp_path / "out"))
    stale = Lease._take(store, "synthesize", ttl_s=0.3, renew_every_s=3600)
    time.sleep(0.4)
    Lease._take(ShardStore(store.url), "synthesize", 60.0, 15.0).release()
    stale.renew()
    with pytest.raises(LeaseLostError, match="not renewed"):
        stale.check()
    assert newest(store) is None


def test_the_lease_is_shared_within_a_process_and_leaves_no_empty_folder(tmp_path):
    store = ShardStore(str(tmp_path / "out"))
    outer = Lease.acquire(store, "synthesize")
    inner = Lease.acquire(ShardStore(str(tmp_path / "out") + "/"), "score")  # synthesize scoring its own output
    assert inner is outer and outer.users == 2
    inner.release()
    assert newest(store) is not None  # still held by the outer user
    outer.release()
    assert not (tmp_path / "out").exists()  # nothing else was written: nothing is left


def wait_for_lease(out: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not list((out / LEASE_DIR).glob("*.json")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:] if proc.poll() is not None else "no lease"
        time.sleep(0.2)


@pytest.mark.slow
def test_two_synthesize_runs_on_one_out_never_mix(tmp_path):
    """Different configs, one OUT: the second fails in one line naming the first, which finishes
    alone; the output is the first run's, complete and readable."""
    out = tmp_path / "run"
    base = [CLI, "synthesize", "--model", "bundled:digits", "--num-samples", "64", "--shard-size", "8", "--steps", "40", "--workers", "0", "--out", str(out)]
    first = subprocess.Popen([*base, "--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_lease(out, first)
        os.killpg(first.pid, signal.SIGSTOP)  # held while the second starts (tens of seconds): no race with the first finishing
        try:
            second = subprocess.run([*base, "--seed", "2"], capture_output=True, text=True, timeout=600)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("Error")]
    assert second.returncode == 2 and len(errors) == 1 and "is being written by another synthesize" in errors[0], second.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 1 and sum(r["rows"] for k, r in manifest["shards"].items() if k.startswith("samples/")) == 64
    from minority_core.runs.scoring import open_run
    from minority_core.runs.verify import verify_run

    run_store, run_manifest = open_run(str(out), {})
    assert verify_run(run_store, run_manifest, workers=2)["bad"] == []  # every shard is the first run's, intact
    assert not (out / LEASE_DIR).exists()  # released


def test_build_reference_into_a_url_another_builder_holds_fails_in_one_line(tmp_path):
    """The other builder is this test process (a reference build of bundled digits takes a
    second, too short to catch in the act); the CLI sees a live lease held by another process."""
    ref = tmp_path / "ref"
    holder = Lease._take(ShardStore(str(ref / "demo-classifier")), "build-reference", 60.0, 15.0)
    try:
        second = subprocess.run([CLI, "build-reference", "--source", "bundled:digits", "--reference", str(ref)], capture_output=True, text=True, timeout=600)
    finally:
        holder.users = 1
        holder.release()
    errors = [line for line in second.stderr.splitlines() if line.startswith("Error")]
    assert second.returncode == 2 and len(errors) == 1 and "is being written by another build-reference" in errors[0], second.stderr[-3000:]
    assert holder.record["owner"] in errors[0]
    assert not (ref / "demo-classifier" / "index").exists()  # it wrote nothing


def test_the_lease_of_a_killed_process_on_this_machine_is_free_at_once(tmp_path):
    out = tmp_path / "out"
    code = ("import os, sys; from minority_core.io import ShardStore; from minority_core.io.lease import Lease; "
            f"Lease._take(ShardStore({str(out)!r}), 'synthesize', 3600.0, 3600.0); print('held', flush=True); os._exit(0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "held" in done.stdout, done.stderr
    assert newest(ShardStore(str(out)))[1]["expires"] > time.time() + 3000  # its file says: held for an hour
    taker = Lease.acquire(ShardStore(str(out)), "synthesize")  # but its process is gone
    assert taker.generation == 1
    taker.release()
