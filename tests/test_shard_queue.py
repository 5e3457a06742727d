"""The lanes' shared queue and retry policy, without Prefect or Ray running (tasks/synthesis.py)."""

from __future__ import annotations

import threading
import time

import pytest

import tasks.synthesis as synthesis
from minority_core.errors import CorruptShardError, InputError, NonFiniteSampleError, StorageError
from minority_core.runs.plan import shard_specs
from tasks.synthesis import ShardQueue, name_shard, worth_retrying


@pytest.fixture(autouse=True)
def short_delay(monkeypatch):
    monkeypatch.setattr(synthesis, "SHARD_RETRY_DELAY_S", 0.05)


def test_shards_come_out_in_order_and_a_lazy_plan_is_read_by_position():
    specs = shard_specs(10, 3, seed=0)  # 4 shards, computed on access
    work = ShardQueue(specs)
    assert [work.take(wait=False) for _ in range(5)] == [specs[0], specs[1], specs[2], specs[3], None]


def test_a_transient_failure_comes_back_after_the_delay_before_new_shards_and_only_twice():
    specs = shard_specs(3, 1, seed=0)
    work = ShardQueue(specs)
    first = work.take(wait=False)
    assert work.failed(first, ConnectionError("lost")) == 1
    assert work.take(wait=False) == specs[1]  # not due yet: the next new shard
    time.sleep(0.06)
    assert work.take(wait=False) == first  # due: before any new shard
    assert work.failed(first, StorageError("outage")) == 2
    assert work.take(wait=True) == specs[2]  # a new shard rather than waiting
    assert work.take(wait=True) == first  # nothing else: waits out the delay
    assert work.failed(first, ConnectionError("lost")) is None  # its 2 retries are used up
    assert work.take(wait=True) is None


@pytest.mark.parametrize("error, retried", [
    (ConnectionError("actor lost"), True), (StorageError("503"), True), (CorruptShardError("sha256"), True),
    (NonFiniteSampleError("NaN"), False), (InputError("bad labels"), False), (ValueError("bad"), False),
])
def test_what_is_worth_retrying(error, retried):
    """The same seed repeats a non-finite sample or a bad value; a crash or an outage may pass."""
    assert worth_retrying(error) is retried
    work = ShardQueue(shard_specs(1, 1, seed=0))
    assert (work.failed(work.take(wait=False), error) is not None) is retried


def test_stop_releases_a_lane_waiting_for_a_retry_and_ends_retries(monkeypatch):
    monkeypatch.setattr(synthesis, "SHARD_RETRY_DELAY_S", 60)  # a lane blocked on a far-off retry...
    work = ShardQueue(shard_specs(1, 1, seed=0))
    spec = work.take(wait=False)
    work.failed(spec, ConnectionError("lost"))
    got = []
    lane = threading.Thread(target=lambda: got.append(work.take(wait=True)))
    lane.start()
    time.sleep(0.1)
    work.stop()  # ...is released by stop()
    lane.join(timeout=5)
    assert not lane.is_alive() and got == [None]
    assert work.failed(spec, ConnectionError("lost")) is None


def test_errors_name_their_shard():
    error = StorageError("write s3://b/run/samples/shard-00012.parquet: gave up after 4 attempts")
    name_shard(error, 12)
    assert str(error) == "shard 00012: write s3://b/run/samples/shard-00012.parquet: gave up after 4 attempts"
    name_shard(error, 12)  # once only
    assert str(error).count("shard 00012:") == 1
    odd = KeyError("k")  # its str is not its message: the shard goes into a note
    name_shard(odd, 3)
    assert odd.__notes__ == ["while generating shard 00003"]
