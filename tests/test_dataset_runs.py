"""A dataset run as a deployment runs it, called in this process on the session's Prefect API:
its seed and folder come from its flow run, and `baseline: true` adds a standard arm beside the
guided one, the same seed and sizes, reported together."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parent.parent


def write_dataset(folder: Path, root: Path, name: str, **changes) -> None:
    entry = yaml.safe_load((ROOT / "deployments" / "datasets" / "digits.yaml").read_text())
    entry.update(name=name, output=str(root / "runs"), sampler={"steps": 8}, **changes)
    entry["reference"]["url"] = str(root / "reference")
    entry["run"].update(num_samples=16, shard_size=8, workers=0)
    entry.pop("schedule")
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(entry))


def test_a_baseline_dataset_runs_both_arms_with_one_seed_and_one_report(prefect_api, tmp_path, monkeypatch):
    from flows.dataset_runs import dataset_run_seed, synthesize_dataset

    folder = tmp_path / "datasets"
    folder.mkdir()
    write_dataset(folder, tmp_path, "paired", baseline=True)
    monkeypatch.setenv("MINORITY_DATASETS_DIR", str(folder))
    state = synthesize_dataset("paired", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    guided, standard = Path(result["out"]), Path(result["baseline"]["out"])
    assert standard == guided.with_name(guided.name + "-standard")
    assert guided.name.startswith("paired-") and guided.name.endswith(str(state.state_details.flow_run_id)[:8])  # named after its flow run
    manifests = [json.loads((p / "manifest.json").read_text())["config"] for p in (guided, standard)]
    assert manifests[0]["seed"] == manifests[1]["seed"] == result["seed"] == dataset_run_seed(str(state.state_details.flow_run_id))
    assert manifests[0]["sampler"]["method"] == "self-guided" and manifests[1]["sampler"]["method"] == "standard"
    same_noise = [pq.read_table(p / "samples" / "shard-00000.parquet", columns=["seed"]).column("seed").to_pylist() for p in (guided, standard)]
    assert same_noise[0] == same_noise[1]  # sample for sample: the arms differ only by the guidance
    page = (guided / "report" / "index.html").read_text()
    assert "standard" in page and "guided" in page and result["report"].endswith("report/index.html")
