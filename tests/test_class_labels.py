"""Class labels for class-conditional models (ImageNet-64 style): drawn uniformly unless given;
given ones (`--class-label`, repeatable) go to samples by run-wide index, like prompts, and are
checked against the loaded model before anything is written."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from minority_core.config.sampler import SamplerConfig
from minority_core.models import load_model
from minority_core.runs.generate import generate


@pytest.fixture(scope="module")
def conditional_model(tmp_path_factory) -> str:
    """A tiny class-conditional diffusers UNet2DModel (5 classes) + DDPMScheduler."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = tmp_path_factory.mktemp("tiny-conditional")
    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=8, num_class_embeds=5).save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(folder / "scheduler")
    return f"diffusers:{folder}"


def cli(*args):
    from minority_synth.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_given_labels_cycle_by_run_wide_index_and_condition_the_model(conditional_model):
    loaded = load_model(conditional_model)
    assert loaded.num_classes == 5
    config = SamplerConfig(steps=3, class_labels=[4, 1, 2], batch_size=2)
    images, labels = generate(loaded, 4, config, seed=0, first_index=2)
    assert labels.tolist() == [2, 4, 1, 2]  # samples 2, 3, 4, 5 of the run
    other, _ = generate(loaded, 4, SamplerConfig(steps=3, class_labels=[0], batch_size=2), seed=0, first_index=2)
    assert not torch.allclose(images, other)  # same noise, other class: other images
    _, drawn = generate(loaded, 64, SamplerConfig(steps=2), seed=1)
    assert set(drawn.tolist()) == set(range(5))  # uniform over the model's classes when none given


@pytest.mark.parametrize("labels, message", [([7], r"class labels \[7\] are out of range: .* has classes 0…4"), ([], "non-empty"), ([-1], "≥ 0")])
def test_bad_labels_are_refused(conditional_model, labels, message):
    loaded = load_model(conditional_model)
    with pytest.raises(ValueError, match=message):
        generate(loaded, 2, SamplerConfig(steps=2, class_labels=labels), seed=0)


def test_cli_class_labels_land_in_the_label_column(conditional_model, tmp_path):
    out = tmp_path / "run"
    result = cli("sample", "--model", conditional_model, "--class-label", 3, "--class-label", 0, "--num-samples", 3, "--steps", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert pq.read_table(out / "samples" / "shard-00000.parquet").column("label").to_pylist() == [3, 0, 3]


def test_cli_refuses_labels_for_an_unconditional_model_before_writing(tmp_path):
    out = tmp_path / "run"
    result = cli("sample", "--class-label", 3, "--num-samples", 2, "--steps", 2, "--out", out)
    assert result.exit_code == 2 and "unconditional" in result.output and not out.exists()


@pytest.mark.usefixtures("prefect_api", "ray_local")
@pytest.mark.parametrize("workers", [0, 1])
def test_flow_refuses_out_of_range_labels_at_worker_start_in_one_line(conditional_model, tmp_path, workers):
    """In a Ray actor too: the worker's own ValueError (not Ray's ActorDiedError report), before any shard task."""
    from flows.synthesize import synthesize
    from minority_core.config import SynthesisConfig
    from tests.faults.helpers import task_run_messages

    config = SynthesisConfig.from_options(model=conditional_model, num_samples=4, shard_size=2, steps=2, out=str(tmp_path / "run"), workers=workers,
                             extractor="pixels", class_labels=[9])
    assert config.output_identity()["sampler"]["class_labels"] == [9]
    with task_run_messages() as messages, pytest.raises(ValueError, match=r"class labels \[9\] are out of range") as info:
        synthesize(config)
    assert "\n" not in str(info.value)
    assert not [m for m in messages if "out of range" in m]  # no shard task ran (and failed)
    assert not (tmp_path / "run" / "samples").exists() and not (tmp_path / "run" / "manifest.json").exists()


def test_dataset_files_take_class_labels(conditional_model, tmp_path):
    import yaml

    from minority_core.config.datasets import load_dataset_file

    entry = {"name": "cond", "model": conditional_model, "reference": {"source": "/data", "url": "/ref"}, "output": "/out",
             "sampler": {"class_labels": [1, 3]}}
    (tmp_path / "cond.yaml").write_text(yaml.safe_dump(entry))
    config = load_dataset_file(tmp_path / "cond.yaml").synthesis_config()
    assert config.sampler.class_labels == (1, 3) and config.output_identity()["sampler"]["class_labels"] == [1, 3]
    entry["sampler"]["class_labels"] = [-2]
    (tmp_path / "cond.yaml").write_text(yaml.safe_dump(entry))
    with pytest.raises(ValueError, match=r"cond.yaml: .*class_labels must be a non-empty list of class indices ≥ 0"):
        load_dataset_file(tmp_path / "cond.yaml")
