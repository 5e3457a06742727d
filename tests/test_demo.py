"""The README's first command, `minority-synth demo`, end to end at a small size: reference set,
standard and guided arms on local Ray, scores, the HTML report; a rerun resumes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.usefixtures("prefect_api", "ray_local")


def test_demo_command_runs_both_arms_reports_and_resumes(tmp_path):
    from minority_synth.cli import main

    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--num-samples", "32", "--shard-size", "16", "--workers", "1", "--steps", "12"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    assert f"report: file://{out}/report/index.html" in result.output
    lines = {line.split(":")[0].strip(): line for line in result.output.splitlines() if line.startswith("  ")}
    assert set(lines) == {"standard", "guided"} and all("rare_share" in line and "avgknn_mean" in line for line in lines.values())

    page = (out / "report" / "index.html").read_text()
    assert "standard" in page and "guided" in page and "Rare-class share" in page
    for arm in ("standard", "guided"):
        manifest = json.loads((out / arm / "manifest.json").read_text())
        assert sum(r["rows"] for r in manifest["shards"].values() if r["kind"] == "samples") == 32
        assert {r["kind"] for r in manifest["shards"].values()} == {"samples", "features/demo-classifier", "scores/demo-classifier"}
    assert (out / "reference" / "demo-classifier" / "index" / "meta.json").is_file()

    mtimes = {p: p.stat().st_mtime_ns for p in (out / "guided" / "samples").glob("*.parquet")}
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "guided" / "samples").glob("*.parquet")} == mtimes  # resumed, not regenerated
