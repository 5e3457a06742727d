"""`minority-synth tune`: the selection rule on a hand-made arm table, the sweep's checks, the
dataset-file update, and the command end to end at a tiny size on the bundled model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from minority_core.config.guidance import MinorityGuidance
from minority_core.errors import InputError
from minority_core.runs.tune import assess, check_bounds, choose, set_guidance, sweep

DIGITS_YAML = Path(__file__).resolve().parent.parent / "deployments" / "datasets" / "digits.yaml"


def table() -> list[dict]:
    """Standard sampling and three guided arms: rarer as w grows, precision and confidence fall."""
    return [
        {"name": "standard", "scale": 0.0, "avgknn_mean": 1.00, "precision": 0.95, "confident_share": 0.96},
        {"name": "w1", "scale": 1.0, "avgknn_mean": 1.20, "precision": 0.93, "confident_share": 0.90},
        {"name": "w2", "scale": 2.0, "avgknn_mean": 1.50, "precision": 0.91, "confident_share": 0.95},
        {"name": "w4", "scale": 4.0, "avgknn_mean": 2.00, "precision": 0.80, "confident_share": 0.70},
    ]


def pick(max_drops: dict, rows: list[dict] | None = None) -> str:
    bounds = check_bounds(max_drops, "avgknn_mean")
    return choose(assess(rows or table(), "avgknn_mean", bounds), "avgknn_mean", bounds)["name"]


def test_the_largest_rarity_gain_within_the_allowed_precision_drop_is_chosen():
    assert pick({"precision": 0.05}) == "w2"  # w4 is rarer but drops precision by 0.15
    assert pick({"precision": 0.02}) == "w1"
    assert pick({"precision": 0.2}) == "w4"
    assert pick({"precision": 0.05, "confident_share": 0.03}) == "w2"  # w1 loses 0.06 confidence
    assessed = assess(table(), "avgknn_mean", {"precision": 0.05})
    assert [r["eligible"] for r in assessed] == [False, True, True, False]
    assert assessed[2]["gain"] == pytest.approx(0.5) and assessed[2]["precision_drop"] == pytest.approx(0.04)


def test_a_bound_no_arm_meets_is_one_line_naming_the_closest_arm():
    with pytest.raises(InputError) as caught:
        pick({"precision": 0.01})
    message = str(caught.value)
    assert "\n" not in message and "precision drop ≤ 0.01" in message and "the closest, w1, drops precision by 0.020" in message


def test_the_refusal_names_the_bound_that_failed():
    with pytest.raises(InputError) as caught:
        pick({"precision": 0.2, "confident_share": 0.001})
    message = str(caught.value)
    assert "the closest, w2, drops confident_share by 0.010" in message and "--max-confidence-drop" in message and "precision by" not in message


def test_arms_that_meet_the_bound_but_gain_nothing_are_refused():
    rows = table()
    rows[1]["avgknn_mean"] = 0.9  # within the bound, less rare than standard sampling
    with pytest.raises(InputError, match="raises avgknn_mean above standard sampling"):
        pick({"precision": 0.02}, rows)
    rows[2]["precision"] = None  # a missing number never qualifies
    assert not assess(rows, "avgknn_mean", {"precision": 1.0})[2]["eligible"]


@pytest.mark.parametrize(
    ("scales", "message"),
    [
        ([], "no guidance scales"),
        ([1.0, -0.5], "≥ 0, got -0.5"),
        ([0.0], "only w = 0"),
        ([float("inf")], "finite"),
    ],
)
def test_bad_sweeps_are_refused_in_one_line(scales, message):
    with pytest.raises(InputError, match=message):
        sweep(scales, MinorityGuidance(scale=1.0))


def test_the_sweep_runs_standard_sampling_first_and_each_combination_once():
    settings = sweep([2.0, 0.0, 1.0, 2.0], MinorityGuidance(scale=1.0, every=2), perturb_ratios=[0.4, 0.8])
    assert [s.name for s in settings] == ["standard", "w1-p0pt4-e2-sneg1", "w1-p0pt8-e2-sneg1", "w2-p0pt4-e2-sneg1", "w2-p0pt8-e2-sneg1"]
    with pytest.raises(InputError, match="perturb_ratio must be in"):
        sweep([1.0], MinorityGuidance(scale=1.0), perturb_ratios=[1.5])
    with pytest.raises(InputError, match="at most 64"):
        sweep([float(w) for w in range(1, 66)], MinorityGuidance(scale=1.0))


def test_set_guidance_changes_only_the_guidance_keys():
    text = DIGITS_YAML.read_text()
    new = set_guidance(text, {"scale": 1.5, "every": 2})
    assert yaml.safe_load(new) == {**yaml.safe_load(text), "guidance": {"scale": 1.5, "every": 2}}
    changed = [line for line in new.splitlines() if line not in text.splitlines()]
    assert changed == ["  scale: 1.5", "  every: 2"]  # every comment and other line kept as it was
    assert yaml.safe_load(set_guidance("name: x\n", {"scale": 2.0})) == {"name": "x", "guidance": {"scale": 2.0}}
    with pytest.raises(InputError, match="inline"):
        set_guidance("name: x\nguidance: {scale: 1}\n", {"scale": 2.0})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scales", ""], "no guidance scales"),
        (["--scales", "1,-2"], "≥ 0, got -2.0"),
        (["--scales", "1,x"], "'x' is not a number"),
        (["--every", "0"], "every must be an integer ≥ 1"),
        (["--max-confidence-drop", "0.1", "--model", "diffusers:/nowhere"], "labelling classifier"),
        (["--reference-source", None], "no reference set at"),
    ],
)
def test_bad_tune_input_is_one_line_before_any_work(tmp_path, args, message):
    from minority_synth.cli import main

    base = {"--model": "bundled:digits", "--reference": str(tmp_path / "ref"), "--reference-source": "bundled:digits", "--out": str(tmp_path / "out")}
    given = dict(zip(args[::2], args[1::2]))
    cli = [part for key, value in {**base, **given}.items() if value is not None for part in (key, value)]
    result = CliRunner().invoke(main, ["tune", *cli])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "ref").exists()


def tune_args(tmp_path, out) -> list[str]:
    """`tune` on the bundled model, its reference built under tmp_path from the bundled digits."""
    return ["tune", "--model", "bundled:digits", "--reference", str(tmp_path / "ref"), "--reference-source", "bundled:digits", "--out", str(out)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: diffusers:/nowhere\n", "is a dataset of diffusers:"),
        ("model: bundled:digits\nguidance: {scale: 1.0}\n", "written inline"),
    ],
)
def test_a_dataset_file_tune_cannot_update_is_refused_before_any_work(tmp_path, text, message):
    from minority_synth.cli import main

    dataset = tmp_path / "ds.yaml"
    dataset.write_text(f"name: ds\nreference: {{source: bundled:digits, url: {tmp_path}/ref}}\noutput: {tmp_path}/runs\n{text}")
    before = dataset.read_text()
    args = [*tune_args(tmp_path, tmp_path / "out"), "--write-dataset", str(dataset)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert dataset.read_text() == before and not (tmp_path / "out").exists()


def latest_artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return str(max(found, key=lambda a: a.created).data) if found else ""


def test_tune_end_to_end_picks_a_setting_within_its_bound_writes_it_and_refuses_an_impossible_bound(tmp_path, prefect_api):
    from minority_synth.cli import main

    out, dataset = tmp_path / "tune", tmp_path / "datasets" / "digits.yaml"
    dataset.parent.mkdir()
    shutil.copy(DIGITS_YAML, dataset)
    args = [
        *tune_args(tmp_path, out),
        "--scales",
        "3,12",
        "--num-samples",
        "16",
        "--shard-size",
        "16",
        "--steps",
        "20",
        "--workers",
        "0",
    ]
    result = CliRunner().invoke(main, [*args, "--max-precision-drop", "0.9", "--write-dataset", str(dataset)], catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]

    written = json.loads((out / "tune.json").read_text())
    arms = {arm["name"]: arm for arm in written["arms"]}
    assert set(arms) == {"standard", "w3-p0pt4-e2-s0pt5", "w12-p0pt4-e2-s0pt5"}
    chosen = arms[written["chosen"]]
    base = arms["standard"]
    assert base["precision"] - chosen["precision"] <= 0.9  # the bound holds on its own pilot numbers
    assert chosen["avgknn_mean"] > base["avgknn_mean"]
    qualifying = [a for a in arms.values() if a["scale"] > 0 and base["precision"] - a["precision"] <= 0.9]
    assert chosen["avgknn_mean"] == max(a["avgknn_mean"] for a in qualifying)

    guidance = yaml.safe_load(dataset.read_text())["guidance"]
    assert guidance == {"scale": chosen["scale"], "perturb_ratio": 0.4, "every": 2, "stop_ratio": 0.5}
    original = DIGITS_YAML.read_text().splitlines()
    assert [line for line in dataset.read_text().splitlines() if line not in original] == [
        f"  scale: {chosen['scale']!r}",
        "  perturb_ratio: 0.4",
        "  every: 2",
        "  stop_ratio: 0.5",
    ]
    assert yaml.safe_load((out / "preset.yaml").read_text())["guidance"] == guidance
    page = (out / "report" / "tune.html").read_text()
    assert written["chosen"] in page and (out / "report" / "tradeoff.png").stat().st_size > 1000
    assert (out / "report" / "index.html").is_file()
    assert "data:image/png;base64," in latest_artifact("tune-tradeoff")  # the plot, inlined in the Prefect artifact

    # Resumed (no shard regenerated) with a bound impossible by construction: precision ≤ 1, so a
    # drop of at most -1.01 asks for precision ≥ standard's + 1.01 > 1. One line, exit 2, nothing written.
    samples = {p: p.stat().st_mtime_ns for p in out.glob("arms/*/samples/*.parquet")}
    before = dataset.read_text()
    refused = CliRunner().invoke(main, [*args, "--max-precision-drop", "-1.01", "--write-dataset", str(dataset)])
    assert refused.exit_code == 2, refused.output[-3000:]
    line = refused.output.strip().splitlines()[-1]
    assert line.startswith("Error: no setting of the sweep keeps precision drop ≤ -1.01") and "tune.json" in line
    assert {p: p.stat().st_mtime_ns for p in out.glob("arms/*/samples/*.parquet")} == samples and len(samples) == 3
    assert dataset.read_text() == before
    assert json.loads((out / "tune.json").read_text())["chosen"] is None
