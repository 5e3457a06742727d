"""The package as a user installs it: a built wheel, installed outside the checkout, finds its
bundled datasets and can register deployments whose code is the installed copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel of this checkout, installed (without dependencies: the test's venv has them) into a folder of its own."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy of the tracked files: building in the checkout would leave build/ there
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "runs", "*.egg-info", "__pycache__", ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((root / "dist").glob("minority_synth-*.whl"))
    target = root / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def run_installed(target: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Python with the installed copy first on the path, outside the checkout, no dataset settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINORITY_")}
    env["PYTHONPATH"] = str(target)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_an_installed_wheel_finds_and_validates_its_bundled_datasets(installed, tmp_path):
    code = ("import sys, minority_core, deployments.specs as d; from minority_synth.cli import main; "
            "print('code', minority_core.__file__, d.CODE_ROOT, (d.CODE_ROOT / d.dataset_specs('digits')[0].entrypoint.split(':')[0]).is_file()); "
            "sys.argv = ['minority-synth', 'datasets', 'validate', 'digits']; main()")
    done = run_installed(installed, code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    code_line = next(line for line in done.stdout.splitlines() if line.startswith("code "))
    module, code_root, entrypoint_there = code_line.split()[1:]
    assert module.startswith(str(installed)) and Path(code_root) == installed and entrypoint_there == "True"  # the installed copy, not the checkout
    ok = next(line for line in done.stdout.splitlines() if line.startswith("ok: digits"))
    assert f"output {tmp_path}/runs/datasets/digits" in ok  # relative paths of shipped files start where the user is, not in site-packages
