"""The writer cells of the fault matrix (#16 item 5): two real CLI processes on one output, and a
writer whose lease expires while it is stopped, for synthesize, score and build-reference.

Every writer is a real `minority-synth` process (tests/faults/writer.py adds only a SIGSTOP at a
chosen point and, for the expiry cells, a short lease); every case ends with an exact count of
samples (or reference rows) and a byte comparison with a clean run of the same config.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minority_core.io import ShardStore
from minority_synth.env import DEFAULTS

from .helpers import CELL_SAMPLES, FAST, SLOW, check_output, in_process_reference, make_config, run_flow

pytestmark = pytest.mark.usefixtures("prefect_api")

REPO = Path(__file__).resolve().parents[2]
TTL_S = 2.0  # the expiry cells' lease (the product's is 60 s)


class Writer:
    """One CLI process (through tests/faults/writer.py), output to files."""

    def __init__(self, tmp: Path, name: str, cli: list[str], *hooks: str, prefect: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_"))}
        env.update(DEFAULTS, PYTHONUNBUFFERED="1", PREFECT_HOME=str(tmp / "prefect-home"))
        if prefect:  # synthesize is a flow: run it on the session's API instead of a temporary server
            from prefect.settings import PREFECT_API_URL

            env["PREFECT_API_URL"] = PREFECT_API_URL.value()
        self.files = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(self.files[0], "w") as out, open(self.files[1], "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.faults.writer", *hooks, "--", *cli], cwd=REPO, env=env, stdout=out, stderr=err)

    def wait_stopped(self, what: str, timeout: float = 240) -> None:
        """Until the writer has printed `what` and stopped itself."""
        deadline = time.monotonic() + timeout
        while not (what in self.files[1].read_text() and _state(self.proc.pid) == "T"):
            assert self.proc.poll() is None, f"the writer ended (rc {self.proc.returncode}) before `{what}`:\n{self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, f"no `{what}` in time"
            time.sleep(0.02)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"writer did not exit in {timeout:.0f} s:\n{self.stderr()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def stderr(self) -> str:
        return self.files[1].read_text()

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr().splitlines() if line.startswith("Error")]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def synthesize_args(model: str, out: Path, **changes) -> list[str]:
    o = {**FAST, "num_samples": CELL_SAMPLES, **changes}
    return ["synthesize", "--model", f"diffusers:{model}", "--num-samples", str(o["num_samples"]), "--shard-size", str(o["shard_size"]), "--steps", str(o["steps"]),
            "--every", str(o["every"]), "--guidance-scale", str(o["guidance_scale"]), "--extractor", "pixels", "--workers", "0", "--out", str(out),
            *(["--seed", str(changes["seed"])] if "seed" in changes else [])]


def refused_naming_holder(writer: Writer, purpose: str, code: int = 2) -> None:
    assert writer.finish() == code, writer.stderr()[-3000:]
    errors = writer.error_lines()
    assert len(errors) == 1 and f"is being written by another {purpose}" in errors[0], writer.stderr()[-3000:]


def digits() -> int:
    """Images of the bundled digits reference source, counted by its own loader."""
    from minority_core.io.sources import load_reference_images

    return len(load_reference_images("bundled:digits", {}))


def files_of(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def race(tmp: Path, purpose: str, holder_cli: list[str], same: list[str], different: list[str], prefect: bool = False) -> None:
    """The holder stops right after taking its lease; a writer of the same config and one of a
    different config start then, as two more processes: each fails at once, in one line naming
    the holder; the holder, resumed, finishes alone (exit 0)."""
    # a long lease: stopped while two CLIs start (a minute on a loaded machine), it must not expire
    holder = Writer(tmp, "holder", holder_cli, "--stop-at", "lease", "--ttl", "900", prefect=prefect)
    others = []
    try:
        holder.wait_stopped("lease 0 taken")
        others = [Writer(tmp, "same", same, prefect=prefect), Writer(tmp, "different", different, prefect=prefect)]
        for other in others:
            refused_naming_holder(other, purpose)
        holder.resume()
        assert holder.finish() == 0, holder.stderr()[-3000:]
    finally:
        for each in (holder, *others):
            each.kill()


# --------------------------------------------------------------------------- concurrent writers


def test_synthesize_concurrent_writers_same_and_different_config(tiny_diffusers_model, tmp_path):
    out = tmp_path / "run"
    args = synthesize_args(tiny_diffusers_model, out)
    race(tmp_path, "synthesize", args, args, synthesize_args(tiny_diffusers_model, out, seed=7), prefect=True)
    expected = in_process_reference(make_config(tiny_diffusers_model, str(out), num_samples=CELL_SAMPLES), tmp_path / "clean")
    check_output(ShardStore(str(out)), CELL_SAMPLES, expected=expected)  # every sample once, byte-identical to a clean run


@pytest.fixture()
def scored_pair(tiny_diffusers_model, tmp_path):
    """A run and a pixels reference set (in-process), a pristine copy of the run, and the score
    shards' hashes of a clean scoring of the same URL (scored, recorded, then restored unscored)."""
    from flows.scoring import make_reference, score_run

    out, ref = tmp_path / "run", tmp_path / "ref"
    run_flow(make_config(tiny_diffusers_model, str(out), num_samples=CELL_SAMPLES))
    make_reference("bundled:digits", str(ref), extractor="pixels", index="exact")
    pristine = tmp_path / "pristine"
    shutil.copytree(out, pristine)
    score_run(str(out), str(ref), workers=0)
    clean = score_hashes(out)
    shutil.rmtree(out)
    shutil.copytree(pristine, out)
    return out, ref, clean


def score_hashes(out: Path) -> dict[str, str]:
    """sha256 of each committed scores shard, checked against the files; exactly CELL_SAMPLES scored samples, once each."""
    store = ShardStore(str(out))
    manifest = store.read_manifest()
    records = [r for k, r in manifest.shards.items() if k.startswith("scores/")]
    ids = [i for r in records for i in store.read_shard(r).column("sample_id").to_pylist()]  # verifies size and sha256
    assert len(ids) == len(set(ids)) == CELL_SAMPLES
    return {r.key: r.sha256 for r in records}


def test_score_concurrent_writers_same_and_different_k(scored_pair, tmp_path):
    out, ref, clean = scored_pair
    base = ["score", "--run", str(out), "--reference", str(ref), "--workers", "0"]
    race(tmp_path, "score", base, base, [*base, "--k", "7"])
    assert score_hashes(out) == clean
    check_output_samples_untouched(out)


def check_output_samples_untouched(out: Path) -> None:
    manifest = ShardStore(str(out)).read_manifest()
    assert sum(r.rows for r in manifest.records("samples")) == CELL_SAMPLES


def test_build_reference_concurrent_writers_same_and_different_index(tmp_path):
    from flows.scoring import make_reference

    make_reference("bundled:digits", str(tmp_path / "clean"), extractor="pixels", index="exact")
    ref = tmp_path / "ref"
    base = ["build-reference", "--source", "bundled:digits", "--reference", str(ref), "--extractor", "pixels", "--index", "exact"]
    race(tmp_path, "build-reference", base, base, [*base[:-1], "ivf"])
    built = files_of(ref / "pixels")
    assert built == files_of(tmp_path / "clean" / "pixels") and "index/meta.json" in built  # byte for byte the clean set
    from minority_core.metrics import ReferenceSet

    assert ReferenceSet.load(str(ref / "pixels" / "index")).index.n == digits()  # every digit once


# --------------------------------------------------------------------------- lease expiry


def test_synthesize_lease_expiry_the_taker_finishes_and_the_stopped_writer_cannot_commit(tiny_diffusers_model, tmp_path):
    """The first writer stops after its first commit and so stops renewing; past its lease's
    expiry a second writer takes over and completes the run; the first, resumed, must not commit
    again (one line, exit 2) and must leave the output as the second left it."""
    out = tmp_path / "run"
    args = synthesize_args(tiny_diffusers_model, out, **{k: SLOW[k] for k in ("steps",)})
    first = Writer(tmp_path, "first", args, "--ttl", str(TTL_S), "--renew", "0.5", "--stop-at", "commit", prefect=True)
    try:
        first.wait_stopped("first commit")
        time.sleep(TTL_S + 0.5)
        second = Writer(tmp_path, "second", args, prefect=True)
        assert second.finish() == 0, second.stderr()[-3000:]
        assert "lease 1 taken" in second.stderr()  # it took the next generation over the stale one
        before = files_of(out)
        first.resume()
        code = first.finish()
    finally:
        first.kill()
    errors = first.error_lines()
    assert code == 2 and len(errors) == 1 and "lost the write lease" in errors[0], first.stderr()[-3000:]
    assert files_of(out) == before  # it neither committed nor removed anything
    expected = in_process_reference(make_config(tiny_diffusers_model, str(out), num_samples=CELL_SAMPLES, steps=SLOW["steps"]), tmp_path / "clean")
    check_output(ShardStore(str(out)), CELL_SAMPLES, expected=expected)
