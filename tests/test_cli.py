"""The command line as a user runs it: a subprocess, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

CLI = [str(Path(sys.executable).with_name("minority-synth"))]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


def test_sample_writes_grid_and_parquet(tiny_diffusers_model, tmp_path):
    out = tmp_path / "s"
    proc = run_cli("sample", "--model", f"diffusers:{tiny_diffusers_model}", "--num-samples", "9", "--steps", "5", "--guidance-scale", "1.0", "--every", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["samples"] == 9
    table = pq.read_table(out / "samples" / "shard-00000.parquet")
    assert table.num_rows == 9 and table.column("guidance")[0].as_py() == pytest.approx(1.0)
    assert Image.open(out / "grid.png").size[0] > 8


def test_help_lists_every_command():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("sample", "synthesize", "demo", "train-demo", "build-reference", "score", "filter", "report", "doctor"):
        assert command in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "--model", "nonsense:x", "--out", "{tmp}/a"], "unknown model spec"),
        (["sample", "--model", "bundled:cats", "--out", "{tmp}/a"], "unknown bundled model"),
        (["sample", "--model", "diffusers:{tmp}/missing", "--out", "{tmp}/a"], "neither an existing folder nor a hub id"),
        (["sample", "--every", "0", "--out", "{tmp}/a"], "every must be an integer ≥ 1"),
        (["sample", "--perturb-ratio", "1.5", "--out", "{tmp}/a"], "perturb_ratio must be in (0, 1]"),
        (["sample", "--guidance-scale", "-2", "--out", "{tmp}/a"], "scale must be a finite number ≥ 0"),
        (["sample", "--steps", "1", "--out", "{tmp}/a"], "steps must be"),
        (["synthesize", "--num-samples", "4", "--shard-size", "0", "--out", "{tmp}/a"], "shard_size"),
        (["synthesize", "--num-samples", "4", "--out", "{tmp}/a", "--storage-option", "novalue"], "--storage-option must be key=value"),
        (["filter", "--run", "{tmp}/none"], "no run at"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    proc = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "a" / "samples").exists()


def no_prefect_env() -> dict:
    """This environment without a configured Prefect server (as a user's shell has it by default)."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}


def test_version():
    from importlib.metadata import version

    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"minority-synth, version {version('minority-synth')}"


@pytest.mark.parametrize(
    "args, message",
    [
        (["filter", "--run", "{tmp}/none", "--top-q", "1.5"], "top_q must be in (0, 1]"),
        (["trigger", "digits", "--num-samples", "-5"], "num_samples"),
        (["score", "--run", "{tmp}/none", "--reference", "{tmp}/ref"], "no run at"),
        (["report", "--run", "{tmp}/none", "--reference", "{tmp}/ref", "--out", "{tmp}/rep"], "no run at"),
    ],
)
def test_one_shot_commands_check_input_before_any_server(tmp_path, args, message):
    """Bad input is one line before Prefect is involved: no temporary server is started (none is
    configured) and `trigger` says what is wrong with its values, not that no server answers."""
    env = {**no_prefect_env(), "PREFECT_API_URL": "http://127.0.0.1:9/api"} if args[0] == "trigger" else no_prefect_env()
    proc = subprocess.run(CLI + [a.format(tmp=tmp_path) for a in args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "temporary server" not in proc.stderr + proc.stdout


def test_server_passes_sigterm_on_to_prefect(tmp_path):
    """`minority-synth server` stopped with SIGTERM (as a process manager stops it) takes Prefect's
    server with it: nothing is left listening on its port."""
    import signal
    import time

    from tests.conftest import free_port, wait_for_port

    port = free_port()
    env = {**no_prefect_env(), "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen(CLI + ["server", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, timeout=180)
        proc.send_signal(signal.SIGTERM)  # the CLI only, not its process group
        assert proc.wait(timeout=60) is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                wait_for_port(port, timeout=0.5)
            except RuntimeError:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"Prefect's server still listens on {port} after the CLI got SIGTERM")
    finally:
        import os

        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_help_shows_the_presets_real_defaults():
    """--help tells what a run gets: each sampler knob's value in the presets, not a generic default."""
    from minority_core.config.presets import DIGITS, LATENT

    text = " ".join(run_cli("synthesize", "--help").stdout.split())
    assert f"bundled:digits {DIGITS.sampler.guidance.every}, latent: {LATENT.sampler.guidance.every}" in text
    assert f"bundled:digits {DIGITS.sampler.guidance.perturb_ratio}," in text and f"bundled:digits {DIGITS.sampler.steps}," in text
    trigger = " ".join(run_cli("trigger", "--help").stdout.split())
    for option in ("--num-samples", "--shard-size", "--guidance-scale", "--steps", "--seed", "--workers", "--out", "--watch", "--timeout"):
        after = trigger.split(option, 1)[1].split(" --", 1)[0]
        assert len(after.split()) > 2, f"{option} has no help"
