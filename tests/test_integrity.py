"""Integrity of a run (issue #18): a run holds exactly what it says, and what it reads is checked.

Against the real thing: real files, moto S3 through the session fixtures, real Prefect and Ray
where a row needs them; tiny model, 8-16 samples, so each test takes seconds.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from minority_core.errors import InputError


def reseal(folder, name: str, data: bytes) -> None:
    """Write `name` in a saved reference set and record its new size and hash in meta.json, as a
    careful tamperer (or a buggy writer) would: only the load-time checks can tell."""
    (folder / name).write_bytes(data)
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.fixture()
def saved_reference(tmp_path):
    from minority_core.metrics import ReferenceSet

    features = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    folder = tmp_path / "ref" / "index"
    ReferenceSet.build(features, k_lof=5, k_rarity=3, index="exact").save(str(folder))
    return folder, features


def test_reference_with_nan_lrd_is_one_line_naming_the_file(saved_reference):
    import io

    from minority_core.metrics import ReferenceSet

    folder, features = saved_reference
    assert np.isfinite(ReferenceSet.load(str(folder)).score(features[:3])["lof"]).all()  # the clean set loads and scores
    buffer = io.BytesIO()
    np.save(buffer, np.full(len(features), np.nan))
    reseal(folder, "lrd.npy", buffer.getvalue())
    with pytest.raises(InputError, match=r"lrd\.npy holds non-finite values .*rebuild") as err:
        ReferenceSet.load(str(folder))
    assert "\n" not in str(err.value)


def test_reference_with_inconsistent_shapes_is_refused(saved_reference):
    import io

    from minority_core.metrics import ReferenceSet

    folder, features = saved_reference
    buffer = io.BytesIO()
    np.save(buffer, np.ones(len(features) - 1))
    reseal(folder, "lrd.npy", buffer.getvalue())
    with pytest.raises(InputError, match=r"lrd\.npy has shape \(39,\).*40 rows"):
        ReferenceSet.load(str(folder))


def test_truncated_reference_meta_is_one_line_naming_it(saved_reference):
    from minority_core.metrics import ReferenceSet

    folder, _ = saved_reference
    text = (folder / "meta.json").read_text()
    (folder / "meta.json").write_text(text[: len(text) // 2])
    with pytest.raises(InputError, match=r"meta\.json is not valid JSON .*rebuild the reference set") as err:
        ReferenceSet.load(str(folder))
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- runs

RUN = dict(num_samples=16, shard_size=4, steps=6, every=2, guidance_scale=0.4, extractor="pixels", workers=0)


def run_config(model_folder: str, out: str, **kw):
    from minority_core.config import SynthesisConfig

    return SynthesisConfig.from_options(model=f"diffusers:{model_folder}", out=out, **{**RUN, **kw})


def synthesize(cfg) -> dict:
    from flows.synthesize import synthesize as flow

    return flow(cfg)


def cli(*args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from minority_synth.cli import main

    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def shard_hashes(out: str) -> dict[str, str]:
    from minority_core.io import ShardStore

    return {key: r.sha256 for key, r in ShardStore(out).read_manifest().shards.items()}


@pytest.fixture(scope="module")
def clean_run(tiny_diffusers_model, tmp_path_factory, prefect_api) -> dict:
    """One clean in-process run: what every damaged copy must come back to, byte for byte."""
    out = str(tmp_path_factory.mktemp("clean") / "run")
    summary = synthesize(run_config(tiny_diffusers_model, out))
    assert summary["samples"] == 16 and summary["generated_shards"] == 4
    return {"out": out, "hashes": shard_hashes(out), "model": tiny_diffusers_model}


@pytest.fixture()
def run_copy(clean_run, tmp_path):
    """A copy of the clean run to damage."""
    import shutil
    from pathlib import Path

    out = tmp_path / "run"
    shutil.copytree(clean_run["out"], out)
    return Path(out)


def edit_manifest(out, change) -> None:
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    change(data["shards"])
    path.write_text(json.dumps(data))


def test_a_copied_shard_under_a_new_index_is_refused_naming_it(clean_run, run_copy):
    import shutil

    from minority_core.errors import StorageError

    samples = run_copy / "samples"
    shutil.copy(samples / "shard-00003.parquet", samples / "shard-00004.parquet")
    edit_manifest(run_copy, lambda shards: shards.update({"samples/00004": {**shards["samples/00003"], "index": 4, "path": "samples/shard-00004.parquet"}}))
    code, output = cli("score", "--run", str(run_copy), "--reference", str(run_copy / "no-reference"), "--workers", "0")
    assert code == 2 and "record samples/00004 is beyond the run's plan of 16 samples in 4 shards" in output and len(output.strip().splitlines()) == 1
    with pytest.raises(StorageError, match="samples/00004 is beyond"):  # nor does a rerun count it: 20 samples before
        synthesize(run_config(clean_run["model"], str(run_copy)))
    code, output = cli("verify", "--run", str(run_copy), "--repair")
    assert code == 0 and json.loads(output)["bad"][0]["shard"] == "samples/00004"
    assert not (samples / "shard-00004.parquet").exists()
    again = synthesize(run_config(clean_run["model"], str(run_copy)))
    assert again["samples"] == 16 and again["generated_shards"] == 0 and shard_hashes(str(run_copy)) == clean_run["hashes"]


def test_an_edited_row_count_is_refused_naming_the_record(clean_run, run_copy):
    edit_manifest(run_copy, lambda shards: shards["samples/00002"].update(rows=3))
    code, output = cli("filter", "--run", str(run_copy))
    assert code == 2 and "record samples/00002 says 3 rows where the run's plan" in output and "has 4" in output
    code, output = cli("verify", "--run", str(run_copy), "--repair")
    assert code == 0 and [b["shard"] for b in json.loads(output)["bad"]] == ["samples/00002"]
    again = synthesize(run_config(clean_run["model"], str(run_copy)))  # the forgotten shard is made again: 16, not 15
    assert again["samples"] == 16 and again["generated_shards"] == 1 and shard_hashes(str(run_copy)) == clean_run["hashes"]


def lose_after_lanes(monkeypatch, lose) -> None:
    """Storage loses committed shards while the run goes on: `lose()` runs once, right after the
    lanes committed the last shard (fault injection into the real flow; nothing else replaced)."""
    import flows.synthesize as flow_module

    original, calls = flow_module.run_lanes, []

    def run_lanes(*args, **kwargs):
        totals = original(*args, **kwargs)
        if not calls:
            calls.append(lose())
        return totals

    monkeypatch.setattr(flow_module, "run_lanes", run_lanes)


def test_a_committed_shard_deleted_during_the_run_is_made_again(clean_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    lose_after_lanes(monkeypatch, lambda: (out / "samples" / "shard-00001.parquet").unlink())
    summary = synthesize(run_config(clean_run["model"], str(out)))
    assert summary["samples"] == 16 and summary["generated_shards"] == 5  # 4, then the lost one again
    assert (out / "samples" / "shard-00001.parquet").exists() and shard_hashes(str(out)) == clean_run["hashes"]


def test_a_bucket_recreated_during_the_run_is_filled_again(clean_run, s3_bucket, monkeypatch):
    import s3fs

    from minority_core.io import ShardStore

    url, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)

    def recreate() -> None:
        fs.rm(url, recursive=True)  # bucket and every object gone, as a moto restart leaves it
        fs.mkdir(url)
        fs.invalidate_cache()

    lose_after_lanes(monkeypatch, recreate)
    summary = synthesize(run_config(clean_run["model"], f"{url}/run", storage_options={"client_kwargs": options["client_kwargs"]}))
    assert summary["samples"] == 16 and summary["generated_shards"] == 8
    store = ShardStore(f"{url}/run", options)
    assert {k: r.sha256 for k, r in store.read_manifest().shards.items()} == clean_run["hashes"]
    assert sorted(store.list_indices("samples")) == [0, 1, 2, 3] and all(store.verify(r) for r in store.read_manifest().shards.values())


def pixels_reference(folder) -> str:
    """A saved reference set in the runs' feature space (8×8 grey pixels, 64-d)."""
    from minority_core.metrics import ReferenceSet

    features = np.random.default_rng(1).uniform(-1, 1, size=(40, 64)).astype(np.float32)
    ReferenceSet.build(features, k_lof=5, k_rarity=3, index="exact").save(str(folder / "pixels" / "index"))
    return str(folder)


def test_score_refuses_a_run_whose_samples_are_gone(clean_run, run_copy, tmp_path):
    (run_copy / "samples" / "shard-00002.parquet").unlink()
    code, output = cli("score", "--run", str(run_copy), "--reference", pixels_reference(tmp_path / "ref"), "--workers", "0")
    assert code == 2 and "samples/00002 are missing from storage" in output and len(output.strip().splitlines()) == 1
    assert not (run_copy / "scores").exists()


# --------------------------------------------------------------------------- writers and where they write


def test_sample_never_writes_into_a_synthesize_run(clean_run, run_copy):
    before = (run_copy / "samples" / "shard-00000.parquet").read_bytes()
    code, output = cli("sample", "--model", f"diffusers:{clean_run['model']}", "--out", str(run_copy), "--num-samples", "2", "--steps", "2")
    assert code == 2 and "not a folder `sample` created" in output and len(output.strip().splitlines()) == 1
    assert (run_copy / "samples" / "shard-00000.parquet").read_bytes() == before and not (run_copy / "grid.png").exists()
    assert cli("verify", "--run", str(run_copy))[0] == 0  # every committed record still matches its bytes


def test_memory_output_with_ray_workers_is_refused_before_work(clean_run):
    code, output = cli("synthesize", "--model", f"diffusers:{clean_run['model']}", "--out", "memory://integrity/run", "--workers", "1",
                       "--num-samples", "4", "--steps", "2")
    assert code == 2 and "Ray workers cannot see" in output and len(output.strip().splitlines()) == 1


def test_generation_runs_on_one_thread_in_process_too(clean_run):
    """In-process generation runs on the thread count of an actor (1) and gives the process its own back."""
    import torch

    from minority_core.models import load_model
    from minority_core.runs.generate import generate

    loaded = load_model(f"diffusers:{clean_run['model']}", "cpu")
    seen: list[int] = []
    hook = loaded.model.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generate(loaded, 2, run_config(clean_run["model"], "/unused").sampler, seed=0)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        hook.remove()
        torch.set_num_threads(before)


@pytest.mark.usefixtures("ray_local")
def test_actors_give_the_in_process_bytes_and_relative_file_urls_land_in_the_drivers_folder(clean_run, tmp_path, monkeypatch):
    """workers 1 writes the bytes of workers 0 (the clean run; 1 vs 2 is test_pipeline's); and
    `file://rel/run` resolves in the driver, whose working directory is not the Ray workers'."""
    import os

    monkeypatch.chdir(tmp_path)
    assert os.getcwd() != os.path.dirname(clean_run["out"])
    one = synthesize(run_config(clean_run["model"], "file://rel/run", workers=1))
    assert one["samples"] == 16 and one["generated_shards"] == 4
    assert shard_hashes(str(tmp_path / "rel" / "run")) == clean_run["hashes"]
    assert sorted(p.name for p in (tmp_path / "rel" / "run" / "samples").iterdir()) == [f"shard-{k:05d}.parquet" for k in range(4)]


def test_a_built_reference_is_immutable_and_scores_name_the_one_they_came_from(clean_run, run_copy, tmp_path):
    from flows.scoring import make_reference, score_run

    ref = str(tmp_path / "ref")
    make_reference("bundled:digits", ref, extractor="pixels", index="exact")
    assert score_run(str(run_copy), ref, workers=0)["scored_shards"] == 4
    build = ["build-reference", "--source", "bundled:digits", "--reference", ref, "--extractor", "pixels"]
    meta = (tmp_path / "ref" / "pixels" / "index" / "meta.json").read_bytes()
    code, output = cli(*build, "--index", "exact")
    assert code == 2 and "already holds a reference set" in output and "--overwrite" in output and len(output.strip().splitlines()) == 1
    assert (tmp_path / "ref" / "pixels" / "index" / "meta.json").read_bytes() == meta  # untouched
    code, output = cli(*build, "--index", "ivf", "--overwrite")
    assert code == 0, output
    with pytest.raises(InputError, match="before that reference set was rebuilt"):  # not 'skipped 4' with the old set's scores
        score_run(str(run_copy), ref, workers=0)


def test_verify_names_a_shard_that_holds_another_shards_ids(clean_run, run_copy):
    """A copy of shard 3 under index 2 with its record resealed passes size and sha256; its ids give it away."""
    samples = run_copy / "samples"
    data = (samples / "shard-00003.parquet").read_bytes()
    (samples / "shard-00002.parquet").write_bytes(data)
    edit_manifest(run_copy, lambda shards: shards["samples/00002"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data)))
    code, output = cli("verify", "--run", str(run_copy))
    bad = json.loads(output)["bad"]
    assert code == 1 and [b["shard"] for b in bad] == ["samples/00002"] and "not shard 00002's" in bad[0]["problem"]
