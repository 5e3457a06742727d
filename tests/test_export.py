"""`filter` (in support, classifier confidence, NaN Rarity) and `export` (Parquet + dataset card,
ImageFolder), on small real runs of the bundled digits model made in-process (no Prefect, no Ray):
selections are checked against brute-force numpy over every score and every image, exports are
loaded back with Hugging Face `datasets` and compared with the run's own shards."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from minority_core.config import SynthesisConfig
from minority_core.errors import InputError
from minority_core.io import ShardStore, decode_png, features_matrix, features_table, sample_id, samples_table
from minority_core.runs.scoring import open_run, score_table

ROWS, SHARD = 24, 10  # three shards: 10, 10, 4


def make_run(out: str, seed: int, extractor: str = "demo-classifier", num_samples: int = ROWS) -> str:
    """A committed guided run of the bundled model, generated in this process shard by shard."""
    from minority_core.runs.commit import ManifestCommitter
    from minority_core.runs.plan import plan_run, shard_specs
    from minority_core.runs.worker import ShardWorker

    cfg = SynthesisConfig.from_options(model="bundled:digits", num_samples=num_samples, shard_size=SHARD, steps=10, guidance_scale=3.0,
                                       seed=seed, out=out, extractor=extractor, workers=0)
    store = ShardStore(out)
    plan = plan_run(store, cfg.output_identity(), shard_specs(num_samples, SHARD, seed), f"features/{extractor}")
    worker = ShardWorker(cfg.model_dump())
    committer = ManifestCommitter(store, plan.manifest, plan.total)
    for spec in plan.pending:
        result = worker.generate_shard(spec.index, spec.rows, spec.seed, spec.first_index)
        committer.commit_records([result.features, result.samples])
    committer.finish()
    return out


def score_run(run: str, reference: str, extractor: str = "demo-classifier") -> str:
    from minority_core.runs.scoring import ScoreWorker, commit_scores, unscored

    store, manifest = open_run(run, {})
    worker = ScoreWorker(run, f"{reference}/{extractor}/index", extractor)
    commit_scores(store, manifest, (worker.score_shard(r) for r in unscored(store, manifest)[0]))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two scored runs against the digits reference (some samples out of support), and one scored
    against a reference moved far away from every sample (all out of support: Rarity all NaN)."""
    from minority_core.metrics import ReferenceSet
    from minority_core.runs.reference import build_reference_set

    root = tmp_path_factory.mktemp("export-runs")
    build_reference_set("bundled:digits", "demo-classifier", str(root / "ref"), {}, 20, 3, "auto", "cpu")
    store = ShardStore(str(root / "ref" / "demo-classifier"))
    far = features_matrix(store.read_shard(("features", 0), verify=False)) + 100.0
    ShardStore(str(root / "far" / "demo-classifier")).write_shard("features", 0, features_table([sample_id(0, i) for i in range(len(far))], far))
    ReferenceSet.build(far, k_lof=20, k_rarity=3).save(str(root / "far" / "demo-classifier" / "index"))
    made = {name: score_run(make_run(str(root / name), seed), str(root / ref)) for name, seed, ref in (("a", 1, "ref"), ("b", 2, "ref"), ("off", 3, "far"))}
    return root, made


def scores_of(run: str) -> pd.DataFrame:
    store, manifest = open_run(run, {})
    return score_table(store, manifest).to_pandas()


def samples_of(run: str) -> pa.Table:
    store, manifest = open_run(run, {})
    return pa.concat_tables([store.read_shard(r) for r in manifest.records("samples")])


def selection_of(run: str, name: str) -> pd.DataFrame:
    return ShardStore(run).read_shard((f"selections/{name}", 0), verify=False).to_pandas()


def brute_confidence(run: str) -> np.ndarray:
    """The classifier over every image of the run at once (the reference for the per-shard pass)."""
    from minority_core.metrics.features import DemoClassifierFeatures

    images = np.stack([decode_png(cell["bytes"]) for cell in samples_of(run).column("image").to_pylist()])
    return DemoClassifierFeatures().predict(images)[1]


def load(path, **kw):
    import datasets

    return datasets.load_dataset(str(path), split="train", cache_dir=str(path) + "-hf-cache", **kw)


# --------------------------------------------------------------------------- filter


def test_in_support_and_confidence_match_brute_force(runs):
    from minority_core.runs.select import select_rarest

    _, made = runs
    scores, confidence = scores_of(made["a"]), brute_confidence(made["a"])
    cut = float(np.sort(confidence)[len(confidence) // 3:][:2].mean())  # between two samples' confidences: no tie at the cut
    eligible = np.flatnonzero(scores["in_support"].to_numpy() & (confidence >= cut))
    assert 0 < len(eligible) < ROWS  # both filters bite on this run

    store, manifest = open_run(made["a"], {})
    result = select_rarest(store, manifest, "avgknn", top_q=0.5, name="sel", in_support=True, min_confidence=cut)
    expected = eligible[np.argsort(-scores["avgknn"].to_numpy()[eligible], kind="stable")][: round(0.5 * len(eligible))]
    selection = selection_of(made["a"], "sel")
    assert result["selected"] == len(expected) and result["eligible"] == len(eligible) and result["of"] == ROWS
    assert selection["sample_id"].tolist() == scores["sample_id"].to_numpy()[np.sort(expected)].tolist()
    np.testing.assert_allclose(selection["confidence"].to_numpy(), confidence[np.sort(expected)], rtol=1e-5)
    assert selection["in_support"].all() and set(selection["run"]) == {f"file://{made['a']}@{manifest.config_hash[:12]}"}

    above = float(np.median(scores["lof"]))
    select_rarest(store, manifest, "lof", top_q=None, threshold=above, name="thr", in_support=True)
    rows = np.flatnonzero(scores["in_support"].to_numpy() & (scores["lof"].to_numpy() > above))
    assert selection_of(made["a"], "thr")["sample_id"].tolist() == scores["sample_id"].to_numpy()[rows].tolist()


def test_rarity_never_selects_nan(runs):
    from minority_core.runs.select import select_rarest

    _, made = runs
    scores = scores_of(made["a"])
    finite = np.flatnonzero(np.isfinite(scores["rarity"].to_numpy()))
    assert 0 < len(finite) < ROWS  # some out of support (NaN Rarity)
    store, manifest = open_run(made["a"], {})
    assert select_rarest(store, manifest, "rarity", top_q=1.0, name="all-rarity")["selected"] == len(finite)
    picked = selection_of(made["a"], "all-rarity")
    assert picked["sample_id"].tolist() == scores["sample_id"].to_numpy()[finite].tolist() and picked["rarity"].notna().all()
    top = select_rarest(store, manifest, "rarity", top_q=0.25, name="top-rarity")
    assert top["selected"] == round(0.25 * len(finite)) and selection_of(made["a"], "top-rarity")["rarity"].notna().all()

    off_store, off_manifest = open_run(made["off"], {})
    assert scores_of(made["off"])["rarity"].isna().all()
    with pytest.raises(InputError, match="no sample has a finite rarity .*every sample is out of support.*avgknn or lof"):
        select_rarest(off_store, off_manifest, "rarity", top_q=0.1)
    with pytest.raises(InputError, match="none of its 24 samples is in support.*drop in_support"):
        select_rarest(off_store, off_manifest, "avgknn", top_q=0.1, in_support=True)
    assert select_rarest(off_store, off_manifest, "avgknn", top_q=0.25)["selected"] == 6


def test_confidence_needs_a_classifier(runs, tmp_path):
    from minority_core.runs.reference import build_reference_set
    from minority_core.runs.select import select_rarest

    root, made = runs
    store, manifest = open_run(made["a"], {})
    with pytest.raises(InputError, match="no in-support sample has classifier confidence ≥ 1.*lower min_confidence"):
        select_rarest(store, manifest, "avgknn", top_q=0.1, in_support=True, min_confidence=1.0)
    with pytest.raises(InputError, match=r"min_confidence .* in \[0, 1\]"):
        select_rarest(store, manifest, "avgknn", top_q=0.1, min_confidence=90)
    build_reference_set("bundled:digits", "pixels", str(tmp_path / "ref"), {}, 20, 3, "auto", "cpu")
    pixels = score_run(make_run(str(tmp_path / "pixels"), 4, extractor="pixels", num_samples=SHARD), str(tmp_path / "ref"), "pixels")
    with pytest.raises(InputError, match="extractor 'pixels' is not a classifier.*drop min_confidence"):
        select_rarest(*open_run(pixels, {}), "avgknn", top_q=0.1, min_confidence=0.5)


# --------------------------------------------------------------------------- export


def test_parquet_export_loads_back_with_its_card(runs, tmp_path):
    from minority_core.runs.export import export_runs
    from minority_core.runs.select import select_rarest

    _, made = runs
    store, manifest = open_run(made["a"], {})
    select_rarest(store, manifest, "avgknn", top_q=0.5, name="rare-ok", in_support=True, min_confidence=0.5)
    out = tmp_path / "export"
    result = export_runs([open_run(made["a"], {}), open_run(made["b"], {})], ShardStore(str(out)), selection=None, fmt="parquet")
    assert result["rows"] == 2 * ROWS
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}]

    dataset = load(out)
    assert len(dataset) == 2 * ROWS and dataset.features["image"].__class__.__name__ == "Image"
    check_rows(dataset.to_pandas(), dataset, made)

    chosen = tmp_path / "chosen"
    export_runs([open_run(made["a"], {})], ShardStore(str(chosen)), selection="rare-ok")
    picked, selection = load(chosen).to_pandas(), selection_of(made["a"], "rare-ok")
    assert picked["sample_id"].tolist() == selection["sample_id"].tolist() and picked["in_support"].all()
    np.testing.assert_array_equal(picked["confidence"].to_numpy(), selection["confidence"].to_numpy())


def check_rows(frame: pd.DataFrame, dataset, made: dict) -> None:
    """Every exported row equals its run's own sample (pixels, label, seeds) and scores."""
    for name in ("a", "b"):
        store, manifest = open_run(made[name], {})
        rows = frame[frame["run"] == f"file://{made[name]}@{manifest.config_hash[:12]}"]
        samples, scores = samples_of(made[name]).to_pandas().set_index("sample_id"), scores_of(made[name]).set_index("sample_id")
        assert sorted(rows["sample_id"]) == sorted(samples.index) and (rows["run_seed"] == manifest.config["seed"]).all()
        for position, row in rows.iterrows():
            source = samples.loc[row["sample_id"]]
            np.testing.assert_array_equal(np.asarray(dataset[int(position)]["image"]), decode_png(source["image"]["bytes"])[..., 0])
            assert (row["label"], row["seed"], row["arm"]) == (source["label"], source["seed"], source["arm"])
            expected = scores.loc[row["sample_id"]]
            assert row["in_support"] == expected["in_support"] and row["avgknn"] == expected["avgknn"]
            assert row["rarity"] == expected["rarity"] or (np.isnan(row["rarity"]) and np.isnan(expected["rarity"]))


def test_imagefolder_export_loads_back(runs, tmp_path):
    from minority_core.runs.export import export_runs

    _, made = runs
    out = tmp_path / "folder"
    export_runs([open_run(made["a"], {})], ShardStore(str(out)), fmt="imagefolder")
    import datasets

    dataset = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    frame = dataset.to_pandas()
    samples, scores = samples_of(made["a"]).to_pandas().set_index("sample_id"), scores_of(made["a"]).set_index("sample_id")
    assert sorted(frame["sample_id"]) == sorted(samples.index) and "prompt" not in frame  # no prompts in this run: left out
    for position, row in frame.iterrows():
        source = samples.loc[row["sample_id"]]
        assert row["label"] == source["label"]
        np.testing.assert_array_equal(np.asarray(dataset[int(position)]["image"]), decode_png(source["image"]["bytes"])[..., 0])
        rarity = scores.loc[row["sample_id"], "rarity"]
        assert (np.isnan(rarity) and pd.isna(row["rarity"])) or row["rarity"] == rarity  # NaN (out of support) is null in JSON
    metadata = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    for entry in metadata:  # images sit in one folder per label
        assert entry["file_name"].split("/")[0] == str(entry["label"])
        assert Image.open(io.BytesIO((out / "train" / entry["file_name"]).read_bytes())).size == (8, 8)
    assert len(load(out)) == ROWS  # the card's configs find the same files


def test_a_join_of_two_runs_does_not_double_count(runs, tmp_path):
    from minority_core.runs.export import export_runs
    from minority_core.runs.select import select_rarest

    _, made = runs
    for name in ("a", "b"):
        select_rarest(*open_run(made[name], {}), "avgknn", top_q=0.5, name="half")
        export_runs([open_run(made[name], {})], ShardStore(str(tmp_path / name)), selection="half")
    exported = pd.concat([load(tmp_path / name).to_pandas() for name in ("a", "b")], ignore_index=True)
    selections = pd.concat([selection_of(made[name], "half") for name in ("a", "b")], ignore_index=True)
    assert len(exported) == len(selections) == ROWS
    assert not exported.duplicated(["run", "sample_id"]).any() and exported["sample_id"].duplicated().any()  # ids repeat across runs
    joined = exported.merge(selections, on=["run", "sample_id"], suffixes=("", "_selected"))
    assert len(joined) == ROWS and (joined["avgknn"] == joined["avgknn_selected"]).all()
    assert len(exported.merge(selections, on="sample_id")) > ROWS  # what the run column prevents


def test_export_refuses_bad_input(runs, tmp_path):
    from minority_core.runs.export import export_runs

    _, made = runs
    run_a = open_run(made["a"], {})
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x.txt").write_text("x")
    with pytest.raises(InputError, match="is not empty: export to a new folder"):
        export_runs([run_a], ShardStore(str(tmp_path / "used")))
    with pytest.raises(InputError, match="has no selection 'nope': run `minority-synth filter"):
        export_runs([run_a], ShardStore(str(tmp_path / "o1")), selection="nope")
    with pytest.raises(InputError, match="the same run is given twice"):
        export_runs([run_a, open_run(made["a"], {})], ShardStore(str(tmp_path / "o2")))
    with pytest.raises(InputError, match="export format must be one of parquet, imagefolder"):
        export_runs([run_a], ShardStore(str(tmp_path / "o3")), fmt="zip")
    stale = pa.table({"run": ["file:///elsewhere@000000000000"], "sample_id": ["00000-000000"]})
    run_a[0].write_shard("selections/stale", 0, stale)
    with pytest.raises(InputError, match="made on an earlier run at this location"):
        export_runs([run_a], ShardStore(str(tmp_path / "o4")), selection="stale")
    assert not any((tmp_path / d).exists() and any((tmp_path / d).iterdir()) for d in ("o1", "o2", "o3", "o4"))  # refused before writing


def test_export_command(runs, tmp_path):
    from click.testing import CliRunner

    from minority_synth.cli import main

    _, made = runs
    result = CliRunner().invoke(main, ["export", "--run", made["a"], "--run", made["b"], "--out", str(tmp_path / "cli"), "--format", "parquet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == 2 * ROWS and len(load(tmp_path / "cli")) == 2 * ROWS
    again = CliRunner().invoke(main, ["export", "--run", made["a"], "--out", str(tmp_path / "cli")])
    assert again.exit_code == 2 and "is not empty" in again.output and "Traceback" not in again.output


def test_a_failed_export_leaves_nothing(runs, tmp_path):
    import shutil

    from minority_core.errors import CorruptShardError
    from minority_core.runs.export import export_runs

    _, made = runs
    copy = shutil.copytree(made["b"], tmp_path / "b")
    store, manifest = open_run(str(copy), {})
    last = manifest.records("samples")[-1]
    path = store.shard_path("samples", last.index)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF  # same size: found only when the shard is read for the export
    open(path, "wb").write(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(CorruptShardError):
        export_runs([(store, manifest)], ShardStore(str(out)))
    assert not out.exists() or not any(out.iterdir())  # the shards written before the bad one are gone


def test_prompts_travel_into_the_export(tmp_path):
    """A text-to-image run (stand-in images with prompts, pixels features): per-prompt selection in
    support, exported with its prompts."""
    from minority_core.io import Manifest
    from minority_core.metrics import ReferenceSet
    from minority_core.runs.commit import ManifestCommitter
    from minority_core.runs.export import export_runs
    from minority_core.runs.select import select_rarest

    prompts, rng = ["a red cat", "a blue dog"], np.random.default_rng(5)
    reference = rng.integers(0, 256, (200, 64)).astype(np.float32) / 255
    ReferenceSet.build(reference, k_lof=5, k_rarity=3).save(str(tmp_path / "ref" / "pixels" / "index"))
    store = ShardStore(str(tmp_path / "t2i"))
    config = {"model": "stand-in", "extractor": "pixels", "arm": "guided", "num_samples": 24, "shard_size": 12, "seed": 7, "sampler": {"prompts": prompts}}
    committer = ManifestCommitter(store, Manifest(config=config, code_version="test"), 2)
    for k in range(2):
        images = rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
        ids = [sample_id(k, row) for row in range(12)]
        features = store.write_shard("features/pixels", k, features_table(ids, images.reshape(12, -1).astype(np.float32) / 255))
        samples = store.write_shard("samples", k, samples_table(images, k, seed=k, prompts=[prompts[(12 * k + r) % 2] for r in range(12)]))
        committer.commit_records([features, samples])
    committer.finish()
    run = score_run(store.url, str(tmp_path / "ref"), "pixels")
    scores = scores_of(run)
    assert 0 < scores["in_support"].sum() < 24
    select_rarest(*open_run(run, {}), "avgknn", top_q=0.5, name="pp", per_prompt=True, in_support=True)
    export_runs([open_run(run, {})], ShardStore(str(tmp_path / "out")), selection="pp")
    frame = load(tmp_path / "out").to_pandas()
    expected = set()
    for p in prompts:
        rows = np.flatnonzero((np.arange(24) % 2 == prompts.index(p)) & scores["in_support"].to_numpy())
        expected |= set(rows[np.argsort(-scores["avgknn"].to_numpy()[rows], kind="stable")][: max(1, round(0.5 * len(rows)))].tolist())
    assert set(frame["sample_id"]) == {scores["sample_id"][i] for i in expected}
    assert frame["prompt"].tolist() == [prompts[int(s.split("-")[1]) % 2] for s in frame["sample_id"]]  # row r of any shard: prompt r mod 2


@pytest.mark.usefixtures("prefect_api")
def test_filter_command_options(runs):
    from click.testing import CliRunner

    from minority_synth.cli import main

    _, made = runs
    args = ["filter", "--run", made["a"], "--metric", "rarity", "--top-q", "1", "--in-support", "--min-confidence", "0.5", "--name", "cli"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    scores, confidence = scores_of(made["a"]), brute_confidence(made["a"])
    rows = np.flatnonzero(scores["in_support"].to_numpy() & (confidence >= 0.5))
    assert selection_of(made["a"], "cli")["sample_id"].tolist() == scores["sample_id"].to_numpy()[rows].tolist()
    bad = CliRunner().invoke(main, ["filter", "--run", made["off"], "--metric", "rarity", "--top-q", "0.1"])
    assert bad.exit_code == 2 and "every sample is out of support" in bad.output
