"""Ray actors killed in the middle of a shard: restarted, the shard retried, the output unchanged.

Real processes, nothing mocked: one actor is killed through Ray (`ray.kill(no_restart=False)`),
the other gets a SIGKILL to its OS process (pid from `ShardWorker.ping`), both while they are
generating their first shard. The test only *observes* the pipeline (it wraps `make_pool` and
`ManifestCommitter.commit` to learn the actors, their pids and which process produced each shard).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from minority_core.io import ShardStore

from .helpers import SLOW, check_output, make_config, run_flow

pytestmark = pytest.mark.usefixtures("prefect_api", "ray_local")


def alive(pid: int) -> bool:
    """A live (not zombie) process with this pid."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def test_actors_killed_mid_shard_restart_and_output_is_identical(tiny_diffusers_model, tmp_path, clean_slow_run, monkeypatch):
    import ray

    import flows.synthesize as synthesize_module
    from minority_core.runs.commit import ManifestCommitter

    pools: list = []
    commits: list[tuple[int, int]] = []  # (shard index, pid of the process that generated it)
    make_pool, commit = synthesize_module.make_pool, ManifestCommitter.commit

    def observed_make_pool(config):
        pool = make_pool(config)
        pools.append((pool, ray.get([a.ping.remote() for a in pool.actors])))
        return pool

    def observed_commit(self, result):
        commits.append((result.index, result.pid))
        return commit(self, result)

    monkeypatch.setattr(synthesize_module, "make_pool", observed_make_pool)
    monkeypatch.setattr(ManifestCommitter, "commit", observed_commit)

    out = tmp_path / "run"
    kills: dict = {}
    errors: list[BaseException] = []

    def killer() -> None:
        try:
            deadline = time.monotonic() + 300
            while not pools:
                assert time.monotonic() < deadline, "the pool never started"
                time.sleep(0.02)
            pool, pids = pools[0]
            assert len(pids) == 2
            while pool.idle.qsize() > 0:  # both actors borrowed: each is generating a shard
                assert time.monotonic() < deadline, "the actors were never both busy"
                time.sleep(0.01)
            time.sleep(0.3)  # well inside the shard (≈ 1-2 s each)
            kills["commits_before"] = len(commits)
            kills["files_before"] = sorted(p.name for p in (out / "samples").glob("*")) if (out / "samples").exists() else []
            ray.kill(pool.actors[0], no_restart=False)  # Ray kills it and restarts it
            os.kill(pids[1], signal.SIGKILL)  # the OS kills the other one
            kills["pids"] = pids
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = run_flow(make_config(tiny_diffusers_model, str(out), workers=2, **SLOW))
    thread.join(timeout=10)

    assert not errors, errors
    assert kills["commits_before"] == 0 and kills["files_before"] == []  # killed mid-shard, before any write
    assert summary["generated_shards"] == 3 and summary["skipped_shards"] == 0 and summary["samples"] == 24
    killed = set(kills["pids"])
    assert not any(alive(pid) for pid in killed)
    # every shard was committed exactly once, none by a killed process: the interrupted shards 0
    # and 1 were redone by the restarted actors
    assert sorted(i for i, _ in commits) == [0, 1, 2]
    assert not killed & {pid for _, pid in commits}
    result = check_output(ShardStore(str(out)), 24, expected=clean_slow_run["hashes"])
    assert result["ids"] == clean_slow_run["ids"]
