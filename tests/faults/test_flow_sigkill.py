"""The flow's own process SIGKILLed midway, then the same command rerun to completion.

`minority-synth synthesize` runs as a subprocess in its own session (it starts its own ephemeral
Prefect server and local Ray); once the manifest shows at least one committed shard but not all,
the whole process group gets SIGKILL, and anything it started that left the group (found by a
marker in the environment) too. The rerun must generate only the missing shards and end with the
same bytes as a clean run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from minority_core.io import ShardStore
from minority_synth.env import DEFAULTS

from .helpers import check_output, slow_cli_args, temporaries

pytestmark = pytest.mark.usefixtures("prefect_api", "ray_local")

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("minority-synth"))
MARK = "MINORITY_FAULT_TEST_MARK"


def cli_env(tmp_path: Path, mark: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_"))}
    env.update(
        **DEFAULTS, PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONUNBUFFERED="1", **{MARK: mark},
    )
    return env


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment carries our marker: the CLI and everything it started."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def kill_all(mark: str, timeout: float = 30.0) -> list[int]:
    """SIGKILL every marked process by pid until none is left; returns those that needed it."""
    killed = []
    deadline = time.monotonic() + timeout
    while pids := marked_pids(mark):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        assert time.monotonic() < deadline, f"processes survived SIGKILL: {pids}"
        time.sleep(0.2)
    return killed


def committed(out: Path) -> int:
    """Samples shards committed so far, as any reader sees them (snapshot + commit log)."""
    try:
        manifest = ShardStore(str(out)).read_manifest()
    except (OSError, ValueError):  # a directory being created under us
        return 0
    return 0 if manifest is None else len(manifest.committed("samples"))


def summary_of(stdout: str) -> dict:
    match = re.search(r"^\{$.*?^\}$", stdout, re.MULTILINE | re.DOTALL)
    assert match, f"no summary JSON in the output:\n{stdout[-2000:]}"
    return json.loads(match.group(0))


def test_flow_sigkilled_midway_resumes_only_missing_shards(tiny_diffusers_model, tmp_path, clean_slow_run):
    out = tmp_path / "run"
    args = [CLI, *slow_cli_args(tiny_diffusers_model, out)]
    mark = uuid.uuid4().hex
    env = cli_env(tmp_path, mark)
    log = tmp_path / "first.log"
    try:
        with open(log, "wb") as sink:
            proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not 1 <= committed(out) < 3:
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before it could be killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no shard committed in time"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its Prefect server and Ray, all at once
        assert proc.wait(timeout=30) == -signal.SIGKILL
        kill_all(mark)  # anything that had left the process group
        assert marked_pids(mark) == []

        store = ShardStore(str(out))
        before = store.read_manifest()
        done = sorted(before.committed("samples"))
        assert 1 <= len(done) < 3 and sorted(before.committed("features/pixels")) == done
        stats = {(kind, k): os.stat(store.shard_path(kind, k)) for kind in ("samples", "features/pixels") for k in done}

        second = subprocess.run(args, cwd=REPO, env=cli_env(tmp_path, mark), capture_output=True, text=True, timeout=400, start_new_session=True)
        assert second.returncode == 0, second.stderr[-3000:]
        summary = summary_of(second.stdout)
    finally:
        kill_all(mark)

    assert summary["generated_shards"] == 3 - len(done) and summary["skipped_shards"] == len(done)
    assert summary["samples"] == 24 and summary["shards"] == 3
    result = check_output(store, 24, expected=clean_slow_run["hashes"])  # byte-identical to a clean run
    assert result["ids"] == clean_slow_run["ids"]
    for k in done:  # the shards committed before the kill were not written again
        for kind in ("samples", "features/pixels"):
            now = os.stat(store.shard_path(kind, k))
            assert (now.st_ino, now.st_mtime_ns) == (stats[kind, k].st_ino, stats[kind, k].st_mtime_ns)
    assert temporaries(out) == []
