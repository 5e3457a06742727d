"""Dataset files as a data team uses them: `datasets validate` checks what a run will need before
any work (paths, the model's config, the extractor and its weights, the cron), falls back to an
offline extractor when the model's default has no weights, finds the datasets folder outside the
repository (`--datasets-dir`, $MINORITY_DATASETS_DIR), and builds the standard baseline arm."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from minority_core.config import datasets as ds
from minority_core.metrics.features.registry import available_extractors
from minority_synth.cli import main

INCEPTION_ENV = "MINORITY_INCEPTION_WEIGHTS"


def cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def error_line(result) -> str:
    """The single `Error: …` line of a failed command (exit 2); fails the test on anything else."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


def write(folder: Path, name: str = "ds", **fields) -> Path:
    """A dataset file `folder/name.yaml`: a valid digits entry with `fields` laid over it."""
    entry = {"name": name, "model": "bundled:digits", "reference": {"source": "bundled:digits", "url": str(folder / "ref")},
             "output": str(folder / "runs"), **fields}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(entry))
    return path


@pytest.fixture()
def no_inception(tmp_path, monkeypatch) -> Path:
    """Inception's weights looked for where there are none (whatever this machine has cached)."""
    where = tmp_path / "no-such-inception.pth"
    monkeypatch.setenv(INCEPTION_ENV, str(where))
    return where


@pytest.fixture()
def images(tmp_path) -> Path:
    """A real-data folder with one PNG: what a reference source needs to be accepted."""
    from PIL import Image

    folder = tmp_path / "real"
    folder.mkdir()
    Image.new("L", (8, 8), 128).save(folder / "a.png")
    return folder


# --------------------------------------------------------------------------- one-line errors


def test_the_shipped_dataset_validates():
    result = cli("datasets", "validate", ds.DATASETS_DIR / "digits.yaml")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: digits (bundled:digits, extractor demo-classifier, output ")


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"model": "diffusers:{tmp}/no-such-unet"}, r"model: {tmp}/no-such-unet does not exist: give the folder written by save_pretrained"),
        ({"model": "diffusers:someone/not-cached"}, r"model: diffusers:someone/not-cached is neither a folder .* nor in the Hugging Face cache: .*huggingface-cli download"),
        ({"model": "adm:{tmp}/missing.pt", "preset": "celeba64"}, r"model: no ADM checkpoint at {tmp}/missing.pt: put the .pt file there"),
        ({"model": "latent:{tmp}/no-pipeline", "prompts": {"items": ["a street"]}}, r"model: no pipeline folder at {tmp}/no-pipeline"),
        ({"reference": {"source": "{tmp}/no-such-images", "url": "{tmp}/ref"}}, r"reference.source: {tmp}/no-such-images does not exist: give the folder of real images"),
        ({"reference": {"source": "bundled:digits", "extractor": "resnet-9000", "url": "{tmp}/ref"}},
         r"reference.extractor: unknown feature extractor 'resnet-9000': valid names are pixels, demo-classifier, inception-pool3"),
        ({"schedule": {"cron": "99 99 * * *"}}, r"schedule.cron: Invalid cron string: \"99 99 \* \* \*\": five fields in range, e.g. '0 3 \* \* \*'"),
        ({"schedule": {"cron": "0 3 * * *", "timezone": "Mars/Olympus"}}, r"schedule.timezone: Invalid timezone: .*use an IANA name"),
    ],
)
def test_each_bad_dataset_gives_one_line_naming_file_field_and_fix(tmp_path, fields, expected):
    fields = yaml.safe_load(yaml.safe_dump(fields).replace("{tmp}", str(tmp_path)))
    path = write(tmp_path / "datasets", **fields)
    line = error_line(cli("datasets", "validate", path))
    assert line.startswith(f"Error: {path}: "), line
    assert re.search(expected.replace("{tmp}", re.escape(str(tmp_path))), line), line


def test_a_diffusers_folder_without_weights_or_scheduler_is_refused(tmp_diffusers_copy):
    unet, root = tmp_diffusers_copy
    for weights in unet.glob("*.safetensors"):
        weights.unlink()
    line = error_line(cli("datasets", "validate", write(root / "datasets", model=f"diffusers:{root / 'model'}")))
    assert f"model: no weights in {unet}" in line
    (unet / "config.json").write_text("{not json")
    line = error_line(cli("datasets", "validate", write(root / "datasets", model=f"diffusers:{root / 'model'}")))
    assert f"model: {unet / 'config.json'} is not a JSON object" in line


def test_all_problems_of_a_file_are_on_its_one_line(tmp_path):
    path = write(tmp_path / "datasets", model="adm:/nowhere/model.pt", preset="celeba64", schedule={"cron": "99 99 * * *"},
                 reference={"source": str(tmp_path / "gone"), "extractor": "pixels", "url": str(tmp_path / "ref")})
    line = error_line(cli("datasets", "validate", path))
    assert [f in line for f in ("model: no ADM checkpoint", "reference.source:", "schedule.cron:")] == [True] * 3


def test_a_good_custom_model_with_its_own_data_validates(tiny_diffusers_model, images, no_inception, tmp_path):
    path = write(tmp_path / "datasets", model=f"diffusers:{tiny_diffusers_model}",
                 reference={"source": str(images), "extractor": "pixels", "url": str(tmp_path / "ref")}, schedule={"cron": "30 2 * * 1"})
    result = cli("datasets", "validate", path)
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    assert f"ok: ds (diffusers:{tiny_diffusers_model}, extractor pixels" in result.output


# --------------------------------------------------------------------------- extractor fallback


def test_default_extractor_without_weights_falls_back_to_pixels_saying_so(tiny_diffusers_model, images, no_inception, tmp_path, caplog):
    path = write(tmp_path / "datasets", model=f"diffusers:{tiny_diffusers_model}", reference={"source": str(images), "url": str(tmp_path / "ref")})
    result = cli("datasets", "validate", path)
    assert result.exit_code == 0, result.output
    assert f"warning: ds: reference.extractor: the model's default extractor inception-pool3 has no weights at {no_inception}" in result.output
    assert "ok: ds (" in result.output and "extractor pixels" in result.output
    with caplog.at_level("WARNING", logger=ds.__name__):
        entry = ds.get_dataset("ds", tmp_path / "datasets")
    assert entry.reference.extractor == "pixels" and entry.synthesis_config().output.extractor == "pixels"
    assert [r.getMessage() for r in caplog.records if "scoring with pixels instead" in r.getMessage()][0].startswith("dataset ds: reference.extractor:")


def test_default_extractor_with_its_weights_is_kept(tiny_diffusers_model, images, tmp_path, monkeypatch):
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"present")  # presence is what validate checks; loading is the run's
    monkeypatch.setenv(INCEPTION_ENV, str(weights))
    path = write(tmp_path / "datasets", model=f"diffusers:{tiny_diffusers_model}", reference={"source": str(images), "url": str(tmp_path / "ref")})
    checked = ds.check_dataset(ds.load_dataset_file(path))
    assert checked.entry.reference.extractor == "inception-pool3" and checked.warnings == []


def test_a_pinned_extractor_without_weights_is_an_error_not_a_fallback(tiny_diffusers_model, images, no_inception, tmp_path):
    path = write(tmp_path / "datasets", model=f"diffusers:{tiny_diffusers_model}",
                 reference={"source": str(images), "extractor": "inception-spatial", "url": str(tmp_path / "ref")})
    line = error_line(cli("datasets", "validate", path))
    assert f"reference.extractor: inception-spatial needs its weights at {no_inception}, which is not there" in line
    assert "pixels needs no weights" in line


def test_help_lists_every_registered_extractor():
    text = " ".join(cli("datasets", "--help").output.split())
    assert [info.name for info in available_extractors() if info.name not in text] == []
    assert "--datasets-dir" in cli("datasets", "validate", "--help").output


# --------------------------------------------------------------------------- the datasets folder


def test_datasets_outside_the_repo_via_option_and_env(tmp_path, images):
    folder = tmp_path / "elsewhere"
    write(folder, "birds", reference={"source": "real", "url": "refs/birds"}, output="runs")
    shutil.copytree(images, folder / "real")
    listed = cli("datasets", "list", "--datasets-dir", folder)
    assert listed.exit_code == 0 and listed.output.splitlines()[0] == "birds", listed.output
    by_env = cli("datasets", "list", env={ds.DATASETS_ENV: str(folder)})
    assert by_env.exit_code == 0 and by_env.output.splitlines()[0] == "birds" and f"({folder})" in by_env.output
    assert cli("datasets", "validate", "birds", "--datasets-dir", folder).exit_code == 0
    assert cli("datasets", "validate", env={ds.DATASETS_ENV: str(folder)}).output.startswith("ok: birds")
    shown = cli("datasets", "show", "birds", env={ds.DATASETS_ENV: str(folder)})
    assert shown.exit_code == 0 and '"name": "birds"' in shown.output
    entry = ds.get_dataset("birds", folder)  # relative paths start at the file's own folder, outside the repo
    assert entry.output_url == str(folder / "runs") and entry.reference_url == str(folder / "refs" / "birds")
    assert entry.reference_source == str(folder / "real")


def test_the_env_folder_is_read_at_each_call(tmp_path, monkeypatch):
    write(tmp_path / "a", "first")
    write(tmp_path / "b", "second")
    monkeypatch.setenv(ds.DATASETS_ENV, str(tmp_path / "a"))
    assert ds.list_datasets() == ["first"]
    monkeypatch.setenv(ds.DATASETS_ENV, str(tmp_path / "b"))
    assert ds.list_datasets() == ["second"] and ds.get_dataset("second").name == "second"


def test_a_missing_datasets_folder_is_one_line_naming_it_and_the_fix(tmp_path, monkeypatch):
    line = error_line(cli("datasets", "list", "--datasets-dir", tmp_path / "nope"))
    assert line == f"Error: datasets folder {tmp_path / 'nope'} (from --datasets-dir) does not exist: point --datasets-dir at the folder holding your <name>.yaml dataset files"
    line = error_line(cli("datasets", "show", "digits", env={ds.DATASETS_ENV: str(tmp_path / "gone")}))
    assert f"datasets folder {tmp_path / 'gone'} (from ${ds.DATASETS_ENV}) does not exist" in line
    monkeypatch.delenv(ds.DATASETS_ENV, raising=False)
    monkeypatch.setattr(ds, "DATASETS_DIR", tmp_path / "site-packages" / "deployments" / "datasets")  # as from a wheel
    line = error_line(cli("datasets", "validate"))
    assert f"no datasets folder: {tmp_path / 'site-packages'}" in line and f"pass --datasets-dir DIR or set {ds.DATASETS_ENV}=DIR" in line


def test_an_unknown_name_lists_the_known_ones(tmp_path):
    write(tmp_path, "known")
    line = error_line(cli("datasets", "show", "unknown", "--datasets-dir", tmp_path))
    assert f"unknown dataset 'unknown': known datasets are known (files in {tmp_path})" in line


# --------------------------------------------------------------------------- the baseline arm


def test_baseline_config_is_the_standard_arm_with_the_same_seed_and_sizes(tmp_path):
    path = write(tmp_path, baseline=True, guidance={"scale": 2.0}, sampler={"steps": 20}, run={"num_samples": 48, "shard_size": 16, "seed": 7})
    entry = ds.load_dataset_file(path)
    guided = entry.synthesis_config(out=str(tmp_path / "runs" / "r1"))
    base = entry.baseline_config(guided)
    assert entry.baseline and guided.sampler.guidance.scale == 2.0 and guided.output.arm == "guided"
    assert base.sampler.method == "standard" and base.sampler.guidance is None and base.output.arm == "standard"
    assert (base.output.seed, base.output.num_samples, base.output.shard_size, base.sampler.steps) == (7, 48, 16, 20)
    assert base.model == guided.model and base.output.extractor == guided.output.extractor
    assert base.output.out == str(tmp_path / "runs" / "r1-standard") != guided.output.out
    assert ds.load_dataset_file(write(tmp_path, "plain")).baseline is False


def test_a_baseline_beside_an_unguided_dataset_is_refused(tmp_path):
    path = write(tmp_path, baseline=True, guidance={"scale": 0.0})
    with pytest.raises(ValueError, match=r"baseline: the dataset's own arm is already standard sampling .*: drop baseline"):
        ds.load_dataset_file(path)


@pytest.fixture()
def tmp_diffusers_copy(tiny_diffusers_model, tmp_path) -> tuple[Path, Path]:
    """A copy of the tiny diffusers model to damage: (its unet folder, the test folder)."""
    shutil.copytree(tiny_diffusers_model, tmp_path / "model")
    return tmp_path / "model" / "unet", tmp_path


# --------------------------------------------------------------------------- text-to-image datasets


def test_the_example_text_to_image_dataset_validates_once_its_pipeline_and_data_exist(tmp_path, images):
    """The shipped example names a pipeline folder that is not here (validate says so); pointed at a
    tiny real pipeline and real data, the same file validates and reads its prompts file."""
    from tests.tiny_latent import HAS_TRANSFORMERS, build_tiny_pipeline

    example = ds.PROJECT_ROOT / "deployments" / "examples" / "sd-rare-scenes.yaml"
    assert "model: no pipeline folder at" in error_line(cli("datasets", "validate", example))
    entry = yaml.safe_load(example.read_text())
    (tmp_path / "pipeline").mkdir()
    pipeline = Path(build_tiny_pipeline(tmp_path / "pipeline", "clip" if HAS_TRANSFORMERS else "own"))
    entry.update(model=f"latent:{pipeline}", output=str(tmp_path / "runs"))
    entry["reference"].update(source=str(images), extractor="pixels", url=str(tmp_path / "ref"))
    entry["prompts"]["file"] = str(example.with_name("street-prompts.txt"))
    path = tmp_path / "datasets" / "sd-rare-scenes.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(entry))
    prompts = [line for line in example.with_name("street-prompts.txt").read_text().splitlines() if line.strip()]
    result = cli("datasets", "validate", path)
    assert result.exit_code == 0 and f"extractor pixels, output {tmp_path / 'runs'}, {len(prompts)} prompts)" in result.output, result.output
    shutil.rmtree(pipeline / "vae")
    assert f"model: the pipeline in {pipeline} lacks vae/" in error_line(cli("datasets", "validate", path))


# --------------------------------------------------------------------------- what a dataset deploys as


def test_serve_skips_a_bad_dataset_in_one_line_and_serves_the_others(tmp_path, monkeypatch):
    """One file with an impossible cron must not stop serve.py from serving every other dataset."""
    import importlib

    folder = tmp_path / "datasets"
    write(folder, "good", schedule={"cron": "0 3 * * *"})
    write(folder, "bad", schedule={"cron": "99 99 99 99 99"})
    monkeypatch.setenv(ds.DATASETS_ENV, str(folder))
    serve = importlib.import_module("deployments.serve")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # Prefect's logging config keeps this logger's records from pytest's caplog
    serve.LOG.addHandler(handler)
    try:
        served = serve.deployments(ds.list_datasets())
    finally:
        serve.LOG.removeHandler(handler)
    assert sorted((d.flow_name, d.name) for d in served) == [("build-reference", "good"), ("score", "good"), ("synthesize", "good")]
    lines = [r.getMessage() for r in records]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith(f"not serving dataset bad: {folder / 'bad.yaml'}: schedule.cron: Invalid cron string"), lines


def test_build_reference_of_a_dataset_uses_the_extractor_its_runs_score_with(prefect_api, tmp_path, monkeypatch):
    """No extractor pinned: the model preset's (demo-classifier for digits), as its runs use, not inception-pool3."""
    import numpy as np
    from PIL import Image

    from flows.dataset_runs import build_dataset_reference

    real = tmp_path / "real"
    real.mkdir()
    for i, pixels in enumerate(np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)):  # a small source: quick to build
        Image.fromarray(pixels, "L").save(real / f"{i:02d}.png")
    folder = tmp_path / "datasets"
    write(folder, "unpinned", reference={"source": str(real), "url": str(folder / "ref")})
    monkeypatch.setenv(ds.DATASETS_ENV, str(folder))
    runs_use = ds.get_dataset("unpinned").synthesis_config(read_prompts=False).output.extractor
    assert runs_use == "demo-classifier"
    build_dataset_reference("unpinned")
    assert (folder / "ref" / runs_use / "index" / "meta.json").is_file()
    assert sorted(p.name for p in (folder / "ref").iterdir()) == [runs_use]
