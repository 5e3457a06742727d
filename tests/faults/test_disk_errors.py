"""Output-location errors on a local disk: a path through a regular file, a read-only file system,
and a full disk (a tiny tmpfs gives a real ENOSPC). Tests run as root, so chmod cannot deny
anything; the tmpfs cases are skipped where mounting is not allowed.

Each must fail with one clear line and leave nothing partial: no temporaries, and no manifest
naming a shard that is not on disk.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from minority_core.io import ShardStore, StorageError

from .helpers import FEATURES, make_config, run_flow, temporaries

pytestmark = pytest.mark.usefixtures("prefect_api")
PAGE = 4096


@pytest.fixture()
def tmpfs(tmp_path):
    """`tmpfs(options)`: mount a fresh tmpfs (e.g. "size=64k" or "size=64k,ro") and return its path."""
    mounted = []

    def mount(options: str) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def test_parent_is_a_regular_file_gives_one_clear_line(tiny_diffusers_model, tmp_path):
    """Through the CLI in this process: exit 2 and one `Error:` line before any sampling starts."""
    from click.testing import CliRunner

    from minority_synth.cli import main

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file\n")
    out = blocker / "run"
    result = CliRunner().invoke(main, [
        "synthesize", "--model", f"diffusers:{tiny_diffusers_model}", "--num-samples", "8", "--shard-size", "4",
        "--steps", "5", "--extractor", "pixels", "--workers", "0", "--out", str(out),
    ])
    assert result.exit_code == 2, result.output[-3000:]
    line = one_error_line(result.output)
    assert f"output {out} is not writable: NotADirectoryError" in line and "a component of the path is a file" in line
    assert blocker.read_text() == "a regular file\n" and sorted(os.listdir(tmp_path)) == ["not-a-dir"]


def test_read_only_output_fails_clearly_and_writes_nothing(tiny_diffusers_model, tmpfs):
    root = tmpfs("size=64k,ro")
    out = root / "run"
    with pytest.raises(StorageError) as info:
        run_flow(make_config(tiny_diffusers_model, str(out)))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"output {out} is not writable") and "Read-only file system" in message
    assert "read-only" in message.split("Read-only file system", 1)[1]  # a hint follows the OS error
    assert os.listdir(root) == []


@pytest.mark.parametrize("pages_free, full_at", [(6, "the samples shard"), (7, "the manifest")])
def test_disk_full_midway_fails_clearly_and_leaves_nothing_partial(tiny_diffusers_model, tmpfs, pages_free, full_at):
    """Shard 0 takes 3 pages of tmpfs (features 1, samples 2), the manifest 1 more: with 6 pages
    free the disk fills up while shard 1's samples are written, with 7 while the manifest that
    would commit shard 1 is written (the old manifest must survive that intact)."""
    root = tmpfs("size=128k")
    free = os.statvfs(root).f_bavail * os.statvfs(root).f_frsize
    (root / "filler").write_bytes(b"\0" * (free - pages_free * PAGE))
    out = root / "run"
    with pytest.raises(StorageError) as info:
        run_flow(make_config(tiny_diffusers_model, str(out)))
    message = str(info.value)
    assert "\n" not in message and f"file://{out}/" in message and "No space left on device" in message
    assert "disk is full" in message and "gave up after" not in message  # the fix is named; no retry fixes a full disk
    assert temporaries(root) == []
    store = ShardStore(str(out))
    manifest = store.read_manifest()
    assert manifest is not None and sorted(manifest.committed("samples")) == [0] == sorted(manifest.committed(FEATURES))
    assert all(store.verify(record) for record in manifest.shards.values())  # names only shards that are there, intact
    # Shard 1 reached the disk complete when the manifest write failed: the failed run removed it,
    # so what is on disk is exactly what the manifest lists.
    assert store.list_indices("samples") == [0] == store.list_indices(FEATURES)
