"""Ctrl-C and SIGTERM to the CLI's process group: the run stops within 10 s with exit 130 / 143,
no Ray or Prefect process is left, and the rerun resumes to the bytes of a clean run.

The first run starts its own ephemeral Prefect server and local Ray and gets SIGINT after its
first commit (the case that used to hang 120 s on a dead Prefect server, leaving gcs_server and
raylets behind); the second, against the session's Prefect server, gets SIGTERM (it used to exit
-14); the third completes. Processes are found by a marker in their environment
(tests/faults/test_flow_sigkill.py), so one that left the process group is found too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from minority_core.io import ShardStore

from .helpers import check_output, slow_cli_args, temporaries
from .test_flow_sigkill import CLI, REPO, cli_env, committed, kill_all, marked_pids, summary_of

pytestmark = pytest.mark.usefixtures("prefect_api", "ray_local")

STOP_WITHIN_S = 10.0


def stop_midway(args: list[str], env: dict, out, sig: signal.Signals, log) -> tuple[int, float]:
    """Start the CLI in its own session, wait for a commit beyond those already there (or, if only
    the last shard is left, for its worker), signal the whole group; (exit status, seconds to exit)."""
    before = committed(out)
    with open(log, "wb") as sink:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (before < committed(out) < 3 or (before == 2 and _worker_started(env))):
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the signal:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.05)
    sent = time.monotonic()
    os.killpg(proc.pid, sig)
    try:
        code = proc.wait(timeout=60)
    finally:
        kill_all(env["MINORITY_FAULT_TEST_MARK"])
    return code, time.monotonic() - sent


def _worker_started(env: dict) -> bool:
    for pid in marked_pids(env["MINORITY_FAULT_TEST_MARK"]):
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"ray::ShardWorker"):
                return True
        except OSError:
            continue
    return False


@pytest.mark.timeout(900)  # three CLI runs, each starting Prefect and Ray (about 3 min unloaded)
def test_sigint_and_sigterm_stop_the_run_and_the_rerun_resumes(tiny_diffusers_model, tmp_path, clean_slow_run):
    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "run"
    args = [CLI, *slow_cli_args(tiny_diffusers_model, out)]
    session_api = {"PREFECT_API_URL": PREFECT_API_URL.value()}
    for sig, expected, extra in ((signal.SIGINT, 130, {}), (signal.SIGTERM, 143, session_api)):
        mark = uuid.uuid4().hex
        env = {**cli_env(tmp_path, mark), **extra}
        log = tmp_path / f"{sig.name}.log"
        code, seconds = stop_midway(args, env, out, sig, log)
        assert marked_pids(mark) == [], f"left behind after {sig.name}"  # kill_all found nothing to kill either
        assert (code, seconds < STOP_WITHIN_S) == (expected, True), (code, seconds, log.read_text()[-3000:])
        assert "rerun the same command to resume" in log.read_text().splitlines()[-1]

    store = ShardStore(str(out))
    done = sorted(store.read_manifest().committed("samples"))
    assert 1 <= len(done) <= 3
    mark = uuid.uuid4().hex
    try:
        rerun = subprocess.run(
            args, cwd=REPO, env={**cli_env(tmp_path, mark), **session_api}, capture_output=True, text=True, timeout=600, start_new_session=True
        )
    finally:
        kill_all(mark)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = summary_of(rerun.stdout)
    assert summary["generated_shards"] == 3 - len(done) and summary["skipped_shards"] == len(done)
    assert summary["samples"] == 24 and summary["shards"] == 3
    result = check_output(store, 24, expected=clean_slow_run["hashes"])  # byte-identical to a clean run
    assert result["ids"] == clean_slow_run["ids"]
    assert temporaries(out) == []
