"""augment-eval end to end at a tiny size, and its building blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minority_core.demo.augment import augmentation_sets, markdown_table, train_and_evaluate, uint8_to_float
from minority_core.demo.digits import split_digits


def test_augmentation_sets_add_generated_samples():
    images = np.full((5, 8, 8, 1), 255, np.uint8)
    sets = augmentation_sets({"extra": (images, np.array([8, 8, 9, 9, 8]))})
    base = len(split_digits().train_labels)
    assert [len(s.labels) for s in sets] == [base, base + 5]
    assert np.allclose(sets[1].images[-1], 1.0) and sets[1].labels[-1] == 8
    np.testing.assert_allclose(uint8_to_float(np.zeros((1, 2, 2, 1), np.uint8)), -1.0)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        augmentation_sets({"extra": (images, np.array([1, 2, 3, 4]))})


def test_downstream_classifier_learns():
    result = train_and_evaluate(augmentation_sets({})[0], seed=0, epochs=3)
    assert result["accuracy"] > 0.5 and 0 <= result["recall_8"] <= 1


@pytest.mark.usefixtures("prefect_api", "ray_local")
def test_augment_eval_flow_end_to_end(tmp_path):
    from flows.applications import augment_eval_flow

    result = augment_eval_flow(str(tmp_path), num_samples=16, seeds=[0, 1], epochs=1, workers=1, steps=8, shard_size=16)
    assert [r["training set"] for r in result["rows"]] == ["real (imbalanced)", "real + 16 standard samples", "real + 16 minority-guided samples"]
    for row in result["rows"]:
        assert 0 <= row["accuracy"] <= 1 and row["accuracy sd"] >= 0
    saved = json.loads((tmp_path / "augment" / "results.json").read_text())
    assert saved["rows"] == result["rows"] and "pseudo-labels" in saved["note"]
    assert markdown_table(result["rows"]).count("\n") == 4


@pytest.mark.usefixtures("prefect_api", "ray_local")
def test_compare_runs_every_method_end_to_end(tmp_path):
    from flows.compare import METHODS, compare

    result = compare(str(tmp_path), num_samples=16, shard_size=16, workers=1, steps=8, classifier_steps=30)
    assert [row["name"] for row in result["table"]] == list(METHODS)
    for row in result["table"]:
        assert row["samples"] == 16 and row["seconds_per_sample"] > 0 and 0 <= row["rare_share"] <= 1
    html = (tmp_path / "report" / "index.html").read_text()
    assert all(method in html for method in METHODS)
    assert (tmp_path / "level-classifier" / "level_classifier.safetensors").is_file()


def test_each_method_samples_from_the_cli(tmp_path):
    from click.testing import CliRunner

    from minority_synth.cli import main

    for method in ("standard", "self-guided", "boost-and-skip"):
        result = CliRunner().invoke(main, ["sample", "--method", method, "--num-samples", "4", "--steps", "6", "--out", str(tmp_path / method)])
        assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(main, ["sample", "--method", "minority-classifier", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "needs a trained level classifier" in bad.output
    ddim = CliRunner().invoke(main, ["sample", "--method", "boost-and-skip", "--sampler", "ddim", "--out", str(tmp_path / "y")])
    assert ddim.exit_code == 2 and "ancestral sampler only" in ddim.output
