"""latent: (text-to-image) models through the product: the model spec, `generate` with prompts
per sample, the CLI's `sample --prompt/--prompts-file`, and the synthesis flow on real Ray and
Prefect writing a `prompt` column. The pipeline is a tiny random one built here (tests/tiny_latent.py)."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from minority_core.config.sampler import SamplerConfig
from minority_core.diffusion.guidance import MinorityGuidance
from minority_core.io import ShardStore
from minority_core.models import load_model
from minority_core.models.latent import shard_prompts
from minority_core.runs.generate import generate
from tests.configs import sampler_for
from tests.tiny_latent import HAS_TRANSFORMERS, IMAGE, build_tiny_pipeline

PROMPTS = ["a cat", "red dog", "a dog"]


@pytest.fixture(scope="module")
def latent_spec(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-sd-pipeline")
    return "latent:" + build_tiny_pipeline(folder, "clip" if HAS_TRANSFORMERS else "own")


@pytest.fixture(scope="module")
def loaded(latent_spec):
    return load_model(latent_spec)


def test_latent_spec_loads_the_pipeline_with_the_decoded_image_shape(loaded, latent_spec):
    assert loaded.latent is not None and loaded.model is loaded.latent.unet
    assert loaded.shape == IMAGE and loaded.num_classes is None and loaded.spec == latent_spec
    assert loaded.latent.latent_shape == (4, 8, 8)


def test_generate_gives_each_sample_the_prompt_of_its_run_wide_index(loaded, latent_spec):
    """Samples 4, 5, 6 of a run get prompts 1, 2, 0; batches of 2 split them as the sampler does."""
    config = sampler_for(latent_spec, prompts=PROMPTS, steps=3, guidance_scale=1.0, every=1, cfg_scale=2.0, batch_size=2)
    images, labels = generate(loaded, 3, config, seed=5, first_index=4)
    assert images.shape == (3, *IMAGE) and labels is None and torch.isfinite(images).all()

    generator = torch.Generator().manual_seed(5)
    pipe = loaded.latent
    first = pipe.sample(["red dog", "a dog"], config.guidance, 3, 2.0, generator, "ancestral")
    second = pipe.sample(["a cat"], config.guidance, 3, 2.0, generator, "ancestral")
    torch.testing.assert_close(images, torch.cat([first, second]).clamp(-1, 1))

    shifted, _ = generate(loaded, 3, config, seed=5, first_index=5)  # other prompts, same noise
    assert not torch.allclose(shifted, images)


def test_standard_method_and_ddim_run_on_latents(loaded, latent_spec):
    config = sampler_for(latent_spec, prompts=["a cat"], steps=3, method="standard", sampler="ddim", cfg_scale=1.0)
    assert config.guidance is None
    images, _ = generate(loaded, 2, config, seed=0)
    assert images.shape == (2, *IMAGE)


@pytest.mark.parametrize(
    "spec, kw, message",
    [
        ("latent", {}, "text-to-image model: give --prompt"),
        ("bundled:digits", {"prompts": ["a cat"]}, "prompts apply to text-to-image"),
        ("latent", {"prompts": ["a cat"], "method": "boost-and-skip"}, "not available for latent"),
        ("latent", {"prompts": ["a cat"], "distance": "lpips"}, "distance 'l2'"),
        ("latent", {"cfg_scale": 3.0}, "without prompts"),
        ("bundled:digits", {"cfg_scale": 3.0}, "cfg_scale apply to text-to-image"),
        ("latent", {"prompts": []}, "non-empty list"),
        ("latent", {"prompts": ["a cat"], "cfg_scale": float("nan")}, "cfg_scale must be a finite"),
    ],
)
def test_prompt_and_model_mismatches_are_refused_from_the_spec_alone(spec, kw, message):
    spec = "latent:/nowhere" if spec == "latent" else spec  # nothing is loaded: checked at the edge
    with pytest.raises(ValueError, match=message):
        sampler_for(spec, **kw)


def test_library_callers_get_the_same_refusal_from_generate():
    pixel = load_model("bundled:digits")
    with pytest.raises(ValueError, match="prompts apply to text-to-image"):
        generate(pixel, 1, SamplerConfig(steps=2, prompts=("a cat",)), seed=0)


def test_sampler_config_identity_carries_prompts_only_for_text_models():
    plain = SamplerConfig(steps=2).to_dict()
    assert not {"prompts", "cfg_scale", "negative_prompt"} & set(plain)
    text = SamplerConfig(steps=2, prompts=["a", "b"], cfg_scale=3.0, guidance=MinorityGuidance(scale=1.0)).to_dict()
    assert text["prompts"] == ["a", "b"] and text["cfg_scale"] == 3.0 and text["negative_prompt"] == ""
    assert SamplerConfig(**{**text, "guidance": MinorityGuidance(**text["guidance"])}).prompts == ("a", "b")  # round-trips (workers rebuild it)


# -- the CLI ---------------------------------------------------------------------------------------


def cli(*args):
    from minority_synth.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_sample_writes_one_prompt_per_row_and_a_grid(latent_spec, tmp_path):
    out = tmp_path / "run"
    result = cli("sample", "--model", latent_spec, "--prompt", "a cat", "--prompt", "red dog", "--num-samples", 3,
                 "--steps", 3, "--cfg-scale", 2.0, "--guidance-scale", 1.0, "--every", 1, "--out", out)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "samples" / "shard-00000.parquet")
    assert table.column("prompt").to_pylist() == ["a cat", "red dog", "a cat"]
    assert table.column("label").null_count == 3
    image = Image.open(io.BytesIO(table.column("image")[0].as_py()["bytes"]))
    assert image.size == IMAGE[1:] and image.mode == "RGB"
    assert (out / "grid.png").is_file()


def test_cli_prompts_file_skips_blank_lines(latent_spec, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\nred dog\r\n  \na dog\n", encoding="utf-8")
    out = tmp_path / "run"
    result = cli("sample", "--model", latent_spec, "--prompts-file", prompts, "--num-samples", 4, "--steps", 2, "--method", "standard", "--out", out)
    assert result.exit_code == 0, result.output
    assert pq.read_table(out / "samples" / "shard-00000.parquet").column("prompt").to_pylist() == ["a cat", "red dog", "a dog", "a cat"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give --prompt TEXT"),
        (["--prompt", "a", "--prompts-file", "{empty}"], "not both"),
        (["--prompts-file", "{missing}"], "does not exist"),
        (["--prompts-file", "{empty}"], "has no prompts"),
        (["--prompts-file", "{binary}"], "not UTF-8"),
        (["--prompt", "a", "--distance", "lpips"], "distance 'l2'"),
    ],
)
def test_cli_prompt_errors_are_one_line_and_write_nothing(latent_spec, tmp_path, args, message):
    files = {"empty": tmp_path / "empty.txt", "missing": tmp_path / "missing.txt", "binary": tmp_path / "binary.txt"}
    files["empty"].write_text("\n \n")
    files["binary"].write_bytes(b"\xff\xfe\x00bad")
    args = [a.format(**files) for a in args]
    out = tmp_path / "run"
    result = cli("sample", "--model", latent_spec, "--num-samples", 2, "--steps", 2, "--out", out, *args)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()


def test_cli_refuses_prompts_for_a_pixel_model(tmp_path):
    result = cli("sample", "--prompt", "a cat", "--num-samples", 2, "--steps", 2, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "prompts apply to text-to-image" in result.output


# -- the synthesis flow (real Prefect API, real local Ray) ------------------------------------------


@pytest.mark.usefixtures("prefect_api", "ray_local")
def test_flow_on_ray_writes_prompts_per_shard_resumes_and_matches_in_process(latent_spec, tmp_path):
    from flows.synthesize import synthesize
    from minority_core.config import SynthesisConfig

    base = dict(model=latent_spec, num_samples=5, shard_size=2, steps=3, guidance_scale=1.0, every=1, cfg_scale=2.0,
                prompts=PROMPTS, extractor="pixels", sampler="ddim")
    ray_out, local_out = str(tmp_path / "ray"), str(tmp_path / "local")
    summary = synthesize(SynthesisConfig.from_options(**base, out=ray_out, workers=2))
    assert summary["samples"] == 5 and summary["generated_shards"] == 3

    store = ShardStore(ray_out)
    manifest = store.read_manifest()
    records = sorted(manifest.records("samples"), key=lambda r: r.index)
    prompts = [p for r in records for p in store.read_shard(r).column("prompt").to_pylist()]
    assert prompts == shard_prompts(PROMPTS, 0, 5) == ["a cat", "red dog", "a dog", "a cat", "red dog"]
    assert manifest.config["sampler"]["prompts"] == PROMPTS

    again = synthesize(SynthesisConfig.from_options(**base, out=ray_out, workers=2))
    assert again["generated_shards"] == 0 and again["skipped_shards"] == 3

    with pytest.raises(ValueError, match="differs in: sampler"):
        synthesize(SynthesisConfig.from_options(**{**base, "prompts": ["a dog"]}, out=ray_out, workers=2))

    synthesize(SynthesisConfig.from_options(**base, out=local_out, workers=0))  # in-process: same bytes as the Ray actors
    local = ShardStore(local_out).read_manifest()
    assert [r.sha256 for r in sorted(local.records("samples"), key=lambda r: r.index)] == [r.sha256 for r in records]

    # scored and reported: the report has a per-prompt table (a plain-sampled run is the "real" data here)
    from flows.scoring import build_reference, report, score

    real = str(tmp_path / "real")
    synthesize(SynthesisConfig.from_options(**{**base, "guidance_scale": 0.0, "num_samples": 8, "seed": 1}, out=real, workers=0))
    reference = str(tmp_path / "reference")
    build_reference(f"{real}/samples", reference, extractor="pixels", k_lof=3, k_rarity=2)
    score(ray_out, reference, k_avg=3)
    built = report([ray_out], reference, str(tmp_path / "report"), title="latent")
    rows = {r["prompt"]: r for r in built["by_prompt"]["guided"]}
    assert {p: r["samples"] for p, r in rows.items()} == {"a cat": 2, "red dog": 2, "a dog": 1}
    page = (tmp_path / "report" / "report" / "index.html").read_text()
    assert "By prompt" in page and all(p in page for p in PROMPTS)

    # filter: the rarest half of each prompt's samples (at least one each) vs the rarest half overall
    from flows.scoring import filter_samples

    scores = {r["sample_id"]: r["avgknn"] for shard in sorted(store.read_manifest().records("scores/pixels"), key=lambda r: r.index)
              for r in store.read_shard(shard).to_pylist()}
    prompt_of = {r["sample_id"]: r["prompt"] for shard in records for r in store.read_shard(shard).select(["sample_id", "prompt"]).to_pylist()}
    per = filter_samples(ray_out, top_q=0.5, per_prompt=True)
    chosen = pq.read_table(per["selection"].removeprefix("file://")).to_pylist()
    assert per["selected"] == 3 and sorted(r["prompt"] for r in chosen) == sorted(PROMPTS)
    for row in chosen:  # each is the rarest sample of its prompt
        assert row["avgknn"] == max(v for sid, v in scores.items() if prompt_of[sid] == row["prompt"])
    overall = pq.read_table(filter_samples(ray_out, top_q=0.5)["selection"].removeprefix("file://"))
    assert sorted(overall.column("avgknn").to_pylist(), reverse=True) == sorted(scores.values(), reverse=True)[:2]


def test_synthesis_config_refuses_prompts_for_pixel_models(tmp_path):
    from minority_core.config import SynthesisConfig

    with pytest.raises(ValueError, match="prompts apply to text-to-image"):
        SynthesisConfig.from_options(model="bundled:digits", num_samples=2, out=str(tmp_path), prompts=["a cat"])
    with pytest.raises(ValueError, match="give --prompt"):
        SynthesisConfig.from_options(model="latent:/nowhere", num_samples=2, out=str(tmp_path))
    identity = SynthesisConfig.from_options(model="latent:/nowhere", num_samples=2, out=str(tmp_path), prompts=["x"]).output_identity()
    assert json.loads(json.dumps(identity))["sampler"]["prompts"] == ["x"]  # JSON-ready, as the manifest stores it


# -- dataset entries -------------------------------------------------------------------------------


def test_example_text_to_image_dataset_validates_and_reads_its_prompts_file():
    from minority_core.config.datasets import PROJECT_ROOT, load_dataset_file

    entry = load_dataset_file(PROJECT_ROOT / "deployments" / "examples" / "sd-rare-scenes.yaml")
    lines = [line for line in (PROJECT_ROOT / "deployments" / "examples" / "street-prompts.txt").read_text().splitlines() if line.strip()]
    config = entry.synthesis_config()
    sampler = config.sampler
    assert list(sampler.prompts) == lines and sampler.cfg_scale == 7.5 and sampler.negative_prompt == "blurry, low quality"
    assert sampler.prompts == tuple(lines) and sampler.sampler == "ddim" and sampler.steps == 50
    assert config.output_identity()["sampler"]["prompts"] == lines

    # Until its pipeline folder and real images exist, validate names what is missing, in one line.
    result = cli("datasets", "validate", PROJECT_ROOT / "deployments" / "examples" / "sd-rare-scenes.yaml")
    assert result.exit_code == 2 and "model" in result.output and "reference.source" in result.output
    assert "prompts.file" not in result.output  # the prompts file is there and reads


@pytest.mark.parametrize(
    "extra, message",
    [
        ({}, "needs a prompts section"),
        ({"prompts": {"items": ["a"], "file": "p.txt"}}, "exactly one of them"),
        ({"prompts": {"items": []}}, "at least 1 item"),
        ({"model": "bundled:digits", "prompts": {"items": ["a"]}}, "latent: (text-to-image) models only"),
        ({"prompts": {"file": "s3://bucket/prompts.txt"}}, "must be a local path"),
    ],
)
def test_dataset_prompt_mistakes_name_the_file_and_field(tmp_path, extra, message):
    import yaml

    from minority_core.config.datasets import load_dataset_file

    entry = {"name": "t2i", "model": "latent:/models/sd", "reference": {"source": "/data", "url": "/ref"}, "output": "/out", **extra}
    path = tmp_path / "t2i.yaml"
    path.write_text(yaml.safe_dump(entry))
    with pytest.raises(ValueError, match="t2i.yaml") as info:
        load_dataset_file(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_dataset_with_a_missing_prompts_file_fails_validation_in_one_line(tmp_path):
    import yaml

    entry = {"name": "t2i", "model": "latent:/models/sd", "reference": {"source": "/data", "url": "/ref"}, "output": "/out",
             "prompts": {"file": str(tmp_path / "absent.txt")}}
    (tmp_path / "t2i.yaml").write_text(yaml.safe_dump(entry))
    result = cli("datasets", "validate", tmp_path / "t2i.yaml")
    assert result.exit_code == 2 and "absent.txt does not exist" in result.output
