"""The synthesis flow end to end: real Prefect API, real local Ray, local folders and moto S3."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from minority_core.config import SynthesisConfig
from minority_core.io import ShardStore, StorageError

pytestmark = pytest.mark.usefixtures("prefect_api", "ray_local")


def config(model: str, out: str, **kw) -> SynthesisConfig:
    base = dict(model=f"diffusers:{model}", num_samples=40, shard_size=16, steps=6, out=out, extractor="pixels", workers=2, guidance_scale=0.4, every=2)
    return SynthesisConfig.from_options(**{**base, **kw})


def run(cfg: SynthesisConfig) -> dict:
    from flows.synthesize import synthesize

    return synthesize(cfg)


def read_samples(store: ShardStore):
    manifest = store.read_manifest()
    tables = [store.read_shard(r) for r in sorted(manifest.records("samples"), key=lambda r: r.index)]
    return manifest, tables


def check_output(store: ShardStore, n: int, shape=(8, 8)):
    manifest, tables = read_samples(store)
    ids = [i for t in tables for i in t.column("sample_id").to_pylist()]
    assert len(ids) == n and len(set(ids)) == n
    for t in tables:
        image = Image.open(io.BytesIO(t.column("image")[0].as_py()["bytes"]))
        assert image.size == shape
    for record in manifest.records("samples") + manifest.records("features/pixels"):
        assert hashlib.sha256(store.fs.cat_file(store.shard_path(record.kind, record.index))).hexdigest() == record.sha256
    features = [store.read_shard(r) for r in manifest.records("features/pixels")]
    assert sum(f.num_rows for f in features) == n
    return manifest


def test_flow_writes_local_shards(tiny_diffusers_model, tmp_path):
    out = str(tmp_path / "run")
    summary = run(config(tiny_diffusers_model, out))
    assert summary["samples"] == 40 and summary["shards"] == 3 and summary["generated_shards"] == 3
    manifest = check_output(ShardStore(out), 40)
    assert manifest.config["sampler"]["guidance"]["scale"] == 0.4
    table = pq.read_table(Path(out) / "samples")  # the folder reads as one dataset
    assert table.num_rows == 40


def test_flow_writes_to_moto_s3(tiny_diffusers_model, s3_bucket):
    url, options = s3_bucket
    endpoint = {"client_kwargs": options["client_kwargs"]}  # credentials come from the environment
    summary = run(config(tiny_diffusers_model, f"{url}/runs/a", storage_options=endpoint))
    assert summary["samples"] == 40
    check_output(ShardStore(f"{url}/runs/a", options), 40)


def test_one_and_two_workers_give_identical_shards(tiny_diffusers_model, tmp_path):
    one = run(config(tiny_diffusers_model, str(tmp_path / "w1"), workers=1))
    two = run(config(tiny_diffusers_model, str(tmp_path / "w2"), workers=2))
    assert one["samples"] == two["samples"] == 40
    m1, m2 = ShardStore(str(tmp_path / "w1")).read_manifest(), ShardStore(str(tmp_path / "w2")).read_manifest()
    assert {k: r.sha256 for k, r in m1.shards.items()} == {k: r.sha256 for k, r in m2.shards.items()}


def test_resume_generates_only_missing_shard(tiny_diffusers_model, tmp_path):
    out = str(tmp_path / "run")
    cfg = config(tiny_diffusers_model, out)
    run(cfg)
    store = ShardStore(out)
    before = {k: r.sha256 for k, r in store.read_manifest().shards.items()}
    store.delete("samples", 1)
    again = run(cfg)
    assert again["generated_shards"] == 1 and again["skipped_shards"] == 2
    after = {k: r.sha256 for k, r in store.read_manifest().shards.items()}
    assert after == before
    check_output(store, 40)
    third = run(cfg)  # nothing missing: nothing generated, nothing duplicated
    assert third["generated_shards"] == 0 and third["samples"] == 40


def test_config_clash_refused_then_overwrite(tiny_diffusers_model, tmp_path):
    out = str(tmp_path / "run")
    run(config(tiny_diffusers_model, out, num_samples=16))
    with pytest.raises(ValueError, match="different config .*--overwrite"):
        run(config(tiny_diffusers_model, out, num_samples=16, guidance_scale=0.8))
    assert ShardStore(out).read_manifest().config["sampler"]["guidance"]["scale"] == 0.4  # untouched
    summary = run(config(tiny_diffusers_model, out, num_samples=16, guidance_scale=0.8, overwrite=True))
    assert summary["generated_shards"] == 1
    assert ShardStore(out).read_manifest().config["sampler"]["guidance"]["scale"] == 0.8


def test_unreachable_storage_fails_fast_and_leaves_nothing(tiny_diffusers_model):
    cfg = config(tiny_diffusers_model, "s3://nowhere/run", storage_options={"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}})
    with pytest.raises(StorageError, match="not writable"):
        run(cfg)


def test_missing_bucket_is_a_clear_error(tiny_diffusers_model, moto_endpoint):
    cfg = config(tiny_diffusers_model, "s3://no-such-bucket-xyz/run", storage_options={"client_kwargs": {"endpoint_url": moto_endpoint}})
    with pytest.raises(StorageError, match="no-such-bucket-xyz"):
        run(cfg)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(model="nonsense:thing"), "unknown model spec"),
        (dict(shard_size=0), "shard_size"),
        (dict(num_samples=-5), "num_samples"),
        (dict(out="relative/path"), "absolute path or a URL"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(every=0), "every must be an integer"),
        (dict(storage_options={"secret": "abc"}), "may be credentials"),
    ],
)
def test_bad_config_is_refused(tmp_path, kw, message):
    base = dict(model="bundled:digits", num_samples=10, out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match=message):
        SynthesisConfig.from_options(**{**base, **kw})
    assert not (tmp_path / "x").exists()


def test_unknown_model_folder_fails_before_writing(tmp_path):
    cfg = SynthesisConfig.from_options(model=f"diffusers:{tmp_path / 'missing'}", num_samples=4, out=str(tmp_path / "out"), workers=1, extractor="pixels")
    with pytest.raises(ValueError, match="neither an existing folder nor a hub id") as info:  # the worker's error, from its Ray actor
        run(cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "manifest.json").exists() and not (tmp_path / "out" / "samples").exists()


def test_shard_files_without_a_manifest_are_refused_unless_overwrite(tiny_diffusers_model, tmp_path):
    """`sample --out DIR` output (a shard, no manifest) is never deleted by a synthesize run into DIR."""
    from click.testing import CliRunner

    from minority_synth.cli import main

    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["sample", "--model", f"diffusers:{tiny_diffusers_model}", "--num-samples", "2", "--steps", "2", "--out", str(out)]).exit_code == 0
    before = (out / "samples" / "shard-00000.parquet").read_bytes()
    cfg = config(tiny_diffusers_model, str(out), num_samples=16, workers=0)
    with pytest.raises(ValueError, match="holds shard files but no manifest.json .* pass --overwrite"):
        run(cfg)
    assert (out / "samples" / "shard-00000.parquet").read_bytes() == before and not (out / "manifest.json").exists()
    summary = run(cfg.replace(overwrite=True))
    assert summary["samples"] == 16 and ShardStore(str(out)).list_indices("samples") == [0]


def test_a_run_recorded_by_the_previous_version_resumes(tiny_diffusers_model, tmp_path):
    """Manifests written before class labels became a list carry `class_label: null`: same run, resumed."""
    from minority_core.io import Manifest

    cfg = config(tiny_diffusers_model, str(tmp_path / "run"), workers=0)
    run(cfg)
    store = ShardStore(cfg.output.out)
    current = store.read_manifest()
    old_config = {**current.config, "sampler": {**current.config["sampler"], "class_label": None}}
    store.write_manifest(Manifest(config=old_config, code_version="0.0.9", shards=dict(current.shards)))
    summary = run(cfg)
    assert summary["generated_shards"] == 0 and summary["skipped_shards"] == 3
    with pytest.raises(ValueError, match="differs in: sampler"):  # a real difference is still refused
        run(cfg.replace(steps=7))


def test_a_worker_whose_start_failed_retries_it_before_its_next_shard(tiny_diffusers_model, tmp_path):
    """What a Ray-restarted actor meets when its model was briefly unreachable: ping() reports the
    start-up error as itself; once the model is back, the next shard starts the worker again."""
    import shutil

    from minority_core.runs.plan import shard_seed
    from minority_core.runs.worker import ShardWorker

    folder = tmp_path / "model"
    cfg = config(str(folder), str(tmp_path / "out"), workers=0)
    worker = ShardWorker(cfg.replace(extractor="pixels").model_dump(mode="json"))
    with pytest.raises(ValueError, match="neither an existing folder nor a hub id"):
        worker.ping()
    shutil.copytree(tiny_diffusers_model, folder)
    result = worker.generate_shard(0, 4, shard_seed(0, 0), 0)
    assert result.samples.rows == 4 and worker.init_error is None and worker.ping() > 0
