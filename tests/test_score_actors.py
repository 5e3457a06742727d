"""Scoring on Ray actors (resumable per shard) and reports/filters that read score columns and decode
only the images they show, on small synthetic runs written straight through ShardStore (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from minority_core.io import Manifest, ShardStore, features_table, sample_id, samples_table
from minority_core.metrics import ReferenceSet
from minority_core.runs.commit import ManifestCommitter

SHARDS, ROWS = 6, 20
PROMPTS = ["a red cat", "a blue dog", "a green bird"]


def make_run(url: str, shards: int = SHARDS, rows: int = ROWS, seed: int = 0, prompts: list[str] | None = None) -> str:
    """A committed run of random 8×8 grey images whose pixels are their 64-d "pixels" features."""
    rng = np.random.default_rng(seed)
    store = ShardStore(url)
    config = {"model": "stand-in", "extractor": "pixels", "arm": "guided", "num_samples": shards * rows, "shard_size": rows,
              "seed": seed, "sampler": {"prompts": prompts}}
    committer = ManifestCommitter(store, Manifest(config=config, code_version="test"), shards)
    for k in range(shards):
        images = rng.integers(0, 256, (rows, 8, 8, 1), dtype=np.uint8)
        ids = [sample_id(k, row) for row in range(rows)]
        shard_prompts = None if prompts is None else [prompts[(k * rows + row) % len(prompts)] for row in range(rows)]
        features = store.write_shard("features/pixels", k, features_table(ids, images.reshape(rows, -1).astype(np.float32) / 255))
        samples = store.write_shard("samples", k, samples_table(images, k, seed=k, arm="guided", prompts=shard_prompts))
        committer.commit_records([features, samples])
    committer.finish()
    return url


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """A pixels reference set of 300 random 8×8 images (features + saved ReferenceSet)."""
    root = tmp_path_factory.mktemp("reference")
    features = np.random.default_rng(99).integers(0, 256, (300, 64)).astype(np.float32) / 255
    ShardStore(str(root / "pixels")).write_shard("features", 0, features_table([sample_id(0, i) for i in range(300)], features))
    ReferenceSet.build(features, k_lof=5, k_rarity=3).save(str(root / "pixels" / "index"))
    return str(root)


def scores_bytes(run: str) -> dict[int, bytes]:
    """Each committed scores shard's bytes, without its run column (which names the run's own URL)."""
    import io

    import pyarrow.parquet as pq

    store = ShardStore(run)
    shards = {}
    for r in store.read_manifest().records("scores/pixels"):
        table = pq.read_table(io.BytesIO(store.fs.cat_file(store.shard_path(r.kind, r.index))))
        assert set(table.column("run").to_pylist()) == {f"file://{run}@{store.read_manifest().config_hash[:12]}"}
        sink = io.BytesIO()
        pq.write_table(table.drop_columns(["run"]), sink)
        shards[r.index] = sink.getvalue()
    return shards


def score_in_process(run: str, reference: str) -> None:
    """The library path without Prefect or Ray: one ScoreWorker, each shard committed."""
    from minority_core.runs.scoring import ScoreWorker, commit_scores, open_run, unscored

    store, manifest = open_run(run, {})
    worker = ScoreWorker(run, f"{reference}/pixels/index", "pixels")
    commit_scores(store, manifest, (worker.score_shard(r) for r in unscored(store, manifest)[0]))


# --------------------------------------------------------------------------- scoring on actors


@pytest.mark.usefixtures("prefect_api", "ray_local")
def test_two_actors_score_exactly_as_in_process_and_a_rerun_skips(tmp_path, reference):
    from flows.scoring import score

    on_actors, in_process = make_run(str(tmp_path / "actors")), make_run(str(tmp_path / "local"))
    assert score(on_actors, reference, workers=2) == {"run": on_actors, "scored_shards": SHARDS, "skipped_shards": 0, "extractor": "pixels"}
    assert score(in_process, reference, workers=0)["scored_shards"] == SHARDS
    assert scores_bytes(on_actors) == scores_bytes(in_process) and len(scores_bytes(on_actors)) == SHARDS

    again = score(on_actors, reference, workers=2)
    assert again["scored_shards"] == 0 and again["skipped_shards"] == SHARDS
    store = ShardStore(on_actors)
    store.delete("scores/pixels", 4)  # a committed scores shard that is no longer intact is scored again
    store.fs.pipe_file(store.shard_path("scores/pixels", 77), b"written, never committed")  # e.g. by a killed scoring
    again = score(on_actors, reference, workers=2)
    assert again["scored_shards"] == 1 and again["skipped_shards"] == SHARDS - 1
    assert scores_bytes(on_actors) == scores_bytes(in_process)
    assert store.list_indices("scores/pixels") == list(range(SHARDS))  # committed scores only


@pytest.mark.usefixtures("prefect_api", "ray_local")
@pytest.mark.parametrize("workers", [0, 2])
def test_a_failed_score_keeps_its_committed_shards_and_resumes(tmp_path, reference, workers):
    from flows.scoring import score
    from minority_core.errors import CorruptShardError

    run = make_run(str(tmp_path / "run"))
    clean = make_run(str(tmp_path / "clean"))
    score_in_process(clean, reference)
    store = ShardStore(run)
    path = store.shard_path("features/pixels", 3)
    good = store.fs.cat_file(path)
    store.fs.pipe_file(path, good[:-1] + bytes([good[-1] ^ 1]))  # one flipped byte
    with pytest.raises(CorruptShardError, match=r"scoring features/pixels/shard-00003\.parquet: .*corrupt"):
        score(run, reference, workers=workers)
    committed = {r.index for r in store.read_manifest().records("scores/pixels")}
    assert 3 not in committed
    if workers == 0:  # in order: the shards before the bad one are committed
        assert committed == {0, 1, 2}
    assert {k: scores_bytes(run)[k] for k in committed} == {k: scores_bytes(clean)[k] for k in committed}

    store.fs.pipe_file(path, good)
    again = score(run, reference, workers=workers)
    assert again["scored_shards"] == SHARDS - len(committed) and again["skipped_shards"] == len(committed)
    assert scores_bytes(run) == scores_bytes(clean)


@pytest.mark.usefixtures("prefect_api")
def test_memory_runs_are_scored_in_process(reference):
    from flows.scoring import score

    run = make_run("memory://score-actors-test/run")
    try:
        with pytest.raises(ValueError, match="Ray actors cannot see: score it with workers=0"):
            score(run, reference, workers=2)
        assert score(run, reference)["scored_shards"] == SHARDS  # the default: in-process for memory://
    finally:
        ShardStore("memory://score-actors-test").fs.rm("/score-actors-test", recursive=True)


def test_score_cli_has_a_workers_option():
    from click.testing import CliRunner

    from minority_synth.cli import main

    result = CliRunner().invoke(main, ["score", "--help"])
    assert result.exit_code == 0 and "--workers" in result.output and "0 = in-process" in result.output


# --------------------------------------------------------------------------- reports and filters stream


def test_report_decodes_only_the_images_it_shows(tmp_path, reference, monkeypatch):
    from minority_core.report import ArmResult, build_report
    from minority_core.runs import results
    from minority_core.runs.reference import load_reference_features

    run = make_run(str(tmp_path / "run"), shards=10)
    score_in_process(run, reference)
    decoded = []

    def counting_decode(data: bytes) -> np.ndarray:
        decoded.append(1)
        return decode(data)

    decode = results.decode_png
    monkeypatch.setattr(results, "decode_png", counting_decode)
    arm = results.arm_result(run, load_reference_features(reference, "pixels", {}), {})
    assert 0 < len(decoded) <= 32 and len(arm.images) == len(decoded) == len(arm.image_rows)

    # the same report as from every image of the run, read the old way
    monkeypatch.setattr(results, "decode_png", decode)
    store = ShardStore(run)
    every = np.concatenate([np.stack([decode(c["bytes"]) for c in store.read_shard(r).column("image").to_pylist()])
                            for r in store.read_manifest().records("samples")])
    full = ArmResult(arm.name, arm.scores, arm.summary, every, arm.sample_ids, prompts=arm.prompts, config=arm.config, labels=arm.labels)
    assert len(every) == 10 * ROWS
    expected, built = build_report([full], "t"), build_report([arm], "t")
    assert built.html == expected.html and built.pngs == expected.pngs and built.table == expected.table


def test_classifier_batches_are_those_of_one_call_over_every_image():
    from minority_core.metrics.features import DemoClassifierFeatures
    from minority_core.runs.results import ClassifierBatches

    images = np.random.default_rng(5).integers(0, 256, (1100, 8, 8, 1), dtype=np.uint8)
    classifier = DemoClassifierFeatures()
    seen = []
    predict = classifier.predict
    classifier.predict = lambda batch: (seen.append(len(batch)), predict(batch))[1]
    batches = ClassifierBatches(classifier)
    for start in range(0, len(images), 100):  # shards of 100 across batches of 512
        batches.add(images[start : start + 100])
    labels, confidence = batches.finish()
    assert seen == [512, 512, 76]
    expected_labels, expected_confidence = predict(images)
    assert np.array_equal(labels, expected_labels) and np.array_equal(confidence, expected_confidence)


def test_filter_per_prompt_reads_prompts_shard_by_shard(tmp_path, reference, monkeypatch):
    import pyarrow as pa

    from minority_core.runs import select
    from minority_core.runs.scoring import open_run

    run = make_run(str(tmp_path / "t2i"), prompts=PROMPTS)
    score_in_process(run, reference)
    store, manifest = open_run(run, {})
    reads = []
    read_shard = ShardStore.read_shard
    monkeypatch.setattr(ShardStore, "read_shard", lambda self, shard, verify=True: (reads.append(shard.kind), read_shard(self, shard, verify))[1])
    result = select.select_rarest(store, manifest, "avgknn", top_q=0.2, name="rare-per-prompt", per_prompt=True)
    assert reads.count("samples") == SHARDS and reads.count("scores/pixels") == SHARDS  # each shard once, one at a time

    scores = pa.concat_tables([read_shard(store, r) for r in manifest.records("scores/pixels")])
    values = scores.column("avgknn").to_numpy()
    prompts = np.array([PROMPTS[i % len(PROMPTS)] for i in range(SHARDS * ROWS)], dtype=object)
    expected = set()
    for prompt in PROMPTS:
        rows = np.flatnonzero(prompts == prompt)
        expected |= set(rows[np.argsort(-values[rows], kind="stable")][: round(0.2 * len(rows))].tolist())
    selection = read_shard(store, ("selections/rare-per-prompt", 0), verify=False)
    ids = scores.column("sample_id").to_pylist()
    assert result["selected"] == len(expected) == selection.num_rows
    assert set(selection.column("sample_id").to_pylist()) == {ids[i] for i in expected}
    assert selection.column("prompt").to_pylist() == [prompts[ids.index(i)] for i in selection.column("sample_id").to_pylist()]


def test_scores_of_two_runs_join_on_run_and_sample_id_without_collisions(tmp_path, reference):
    """Sample ids restart in every run; the scores' run column keeps a join of two runs' scores
    one row per sample, where sample_id alone would double count."""
    import pyarrow as pa

    from minority_core.runs.scoring import open_run, score_table

    tables = []
    for seed in (0, 1):
        run = make_run(str(tmp_path / f"run-{seed}"), shards=2, seed=seed)
        score_in_process(run, reference)
        tables.append(score_table(*open_run(run, {})))
    both = pa.concat_tables(tables)
    by_run = both.group_by(["run", "sample_id"]).aggregate([("avgknn", "count")])
    by_id = both.group_by(["sample_id"]).aggregate([("avgknn", "count")])
    assert by_run.num_rows == both.num_rows and set(by_run.column("avgknn_count").to_pylist()) == {1}
    assert by_id.num_rows == both.num_rows // 2  # ids alone collide: every sample twice


def test_rescoring_with_another_k_or_reference_is_refused_not_mixed(tmp_path, reference, tmp_path_factory):
    """Scores record the reference set and k that made them: a second scoring with other ones is
    one line (it used to report 'skipped' and keep the old scores as if they were the new)."""
    from flows.scoring import score_run
    from minority_core.errors import InputError

    run = make_run(str(tmp_path / "run"), shards=2)
    assert score_run(run, reference, k_avg=5, workers=0)["scored_shards"] == 2
    assert score_run(run, reference, k_avg=5, workers=0)["skipped_shards"] == 2  # the same scoring: resumes
    with pytest.raises(InputError, match="with k=5; scoring it against .* with k=7 would mix the two"):
        score_run(run, reference, k_avg=7, workers=0)
    other = tmp_path_factory.mktemp("other-ref")
    import shutil

    shutil.copytree(reference, other, dirs_exist_ok=True)
    with pytest.raises(InputError, match="pass the same --reference and --k"):
        score_run(run, str(other), k_avg=5, workers=0)
