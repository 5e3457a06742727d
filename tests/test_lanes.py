"""The synthesis flow's lanes: a bounded number of Prefect task runs, and retries that stay per shard.

Real Prefect API, real local Ray. Failures are injected by a ShardWorker subclass put where the
pool takes its worker class (`tasks.ray_pool.ShardWorker`); it records every call it gets as a
file, so the test sees what ran inside the Ray actor.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from minority_core.config import SynthesisConfig
from minority_core.io import ShardStore

pytestmark = pytest.mark.usefixtures("prefect_api", "ray_local")

TINY = dict(num_samples=40, shard_size=1, steps=2, extractor="pixels", guidance_scale=0.4, every=2)


def config(model: str, out: Path, workers: int) -> SynthesisConfig:
    return SynthesisConfig.from_options(model=f"diffusers:{model}", out=str(out), workers=workers, **TINY)


def flaky_worker(calls: Path, failing: int, failures: int):
    """A ShardWorker whose call for shard `failing` raises ConnectionError its first `failures` times."""
    from minority_core.runs.worker import ShardWorker

    class FlakyShardWorker(ShardWorker):
        def generate_shard(self, index: int, rows: int, seed: int, first_index: int):
            before = len(list(calls.glob(f"{index:05d}-*")))
            (calls / f"{index:05d}-{uuid.uuid4().hex}").touch()
            if index == failing and before < failures:
                raise ConnectionError(f"injected: storage connection lost (call {before + 1})")
            return super().generate_shard(index, rows, seed, first_index)

    return FlakyShardWorker


def calls_per_shard(calls: Path) -> Counter:
    return Counter(int(p.name.split("-")[0]) for p in calls.iterdir())


def task_name(run) -> str:
    """A task run's name without the random suffix Prefect gives a run not named by its task."""
    return "plan-shards" if run.name.startswith("plan-shards-") else run.name


def task_runs_of(flow_run_id) -> list:
    """The flow run's task runs as the API records them (from events, so read until all are final)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200)
        names = {task_name(r) for r in runs}
        if {"plan-shards", "lane-00"} <= names and all(r.state and r.state.is_final() for r in runs):
            return runs
        assert time.monotonic() < deadline, f"task runs not recorded in time: {sorted(names)}"
        time.sleep(0.5)


class Messages(logging.Handler):
    """What the flow's and tasks' loggers say during a block."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> list[str]:
        for name in ("prefect.task_runs", "prefect.flow_runs"):
            logging.getLogger(name).addHandler(self)
        return self.lines

    def __exit__(self, *exc) -> None:
        for name in ("prefect.task_runs", "prefect.flow_runs"):
            logging.getLogger(name).removeHandler(self)


def hashes(out: Path) -> dict[str, str]:
    return {key: record.sha256 for key, record in ShardStore(str(out)).read_manifest().shards.items()}


def test_many_tiny_shards_make_few_task_runs_and_a_transient_failure_is_retried_alone(tiny_diffusers_model, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    import tasks.ray_pool
    from flows.synthesize import synthesize

    clean = synthesize(config(tiny_diffusers_model, tmp_path / "clean", workers=2))
    assert clean["generated_shards"] == 40

    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.setattr(tasks.ray_pool, "ShardWorker", flaky_worker(calls, failing=7, failures=1))
    out = tmp_path / "run"
    with Messages() as messages:
        state = synthesize(config(tiny_diffusers_model, out, workers=2), return_state=True)
    summary = state.result()
    assert summary["generated_shards"] == 40 and summary["samples"] == 40

    # retried alone: shard 7 ran twice, every other shard once
    assert calls_per_shard(calls) == Counter({**dict.fromkeys(range(40), 1), 7: 2})
    retries = [m for m in messages if "Retry" in m]
    assert len(retries) == 1 and retries[0].startswith("shard 00007 failed (ConnectionError: injected: storage connection lost (call 1)); Retry 1/2")
    assert hashes(out) == hashes(tmp_path / "clean")  # byte-identical to the clean run

    # a bounded number of task runs: planning and one lane per actor, whatever the shard count
    runs = task_runs_of(state.state_details.flow_run_id)
    assert sorted(task_name(r) for r in runs) == ["lane-00", "lane-01", "plan-shards"]
    assert all(r.state.is_completed() for r in runs)
    # per-shard lines are debug only (each line logged is an API write); the progress artifact ends at 100 %
    assert not [m for m in messages if re.match(r"shard \d{5}: \d+ rows", m)]
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
                                                                        key=ArtifactFilterKey(any_=["synthesis-progress-guided"])))
    assert [a.data for a in progress] == [100.0]


def test_a_shard_failing_after_its_retries_fails_the_run_naming_it(tiny_diffusers_model, tmp_path, monkeypatch):
    """In-process (`workers=0`): shard 3 always loses its connection. It is tried 3 times (2 retries),
    the other shards once each; the run fails with shard 3's error, naming it, and leaves only
    committed shards; a rerun without the fault completes byte-identical to a clean run."""
    import tasks.ray_pool
    from flows.synthesize import synthesize

    clean = tmp_path / "clean"
    synthesize(config(tiny_diffusers_model, clean, workers=0).replace(num_samples=8))
    calls = tmp_path / "calls"
    calls.mkdir()
    out = tmp_path / "run"
    cfg = config(tiny_diffusers_model, out, workers=0).replace(num_samples=8)
    with monkeypatch.context() as patch:
        patch.setattr(tasks.ray_pool, "ShardWorker", flaky_worker(calls, failing=3, failures=99))
        with Messages() as messages, pytest.raises(ConnectionError) as info:
            synthesize(cfg)
    assert str(info.value) == "shard 00003: injected: storage connection lost (call 3)"
    assert [re.search(r"Retry \d/\d", m).group(0) for m in messages if m.startswith("shard 00003 failed (")] == ["Retry 1/2", "Retry 2/2"]
    assert "shard 00003 failed: ConnectionError: injected: storage connection lost (call 3)" in messages
    assert calls_per_shard(calls)[3] == 3 and all(n == 1 for k, n in calls_per_shard(calls).items() if k != 3)
    store = ShardStore(str(out))
    manifest = store.read_manifest()
    assert 3 not in manifest.committed("samples") and store.list_indices("samples") == sorted(manifest.committed("samples"))

    summary = synthesize(cfg)
    assert summary["samples"] == 8
    assert hashes(out) == hashes(clean)
