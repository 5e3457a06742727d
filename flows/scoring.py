"""Flows that score what `synthesize` wrote: build a reference set, score, filter, report.

Reference-side work (self-kNN radii, LOF densities) happens once in `build_reference`; scoring a
run is then one batched FAISS query per shard. Each step reads and writes only storage, so any
of them can run alone (`minority-synth score|filter|report|build-reference`).
"""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from minority_core.config import resolve_storage_options
from minority_core.errors import InputError
from minority_core.io import SCORE_COLUMNS, ShardStore, decode_png
from tasks.scoring import build_reference_set, load_reference_features, read_kind, reference_url, score_shard

RARE_CLASSES_BY_MODEL = {"bundled:digits": (8, 9)}
CONFIDENT = 0.9


@flow(name="build-reference-set")
def build_reference(source: str, reference: str, extractor: str = "demo-classifier", k_lof: int = 20, k_rarity: int = 3, index: str = "auto", device: str = "cpu", storage_options: dict | None = None) -> dict:
    """Features of a real dataset (bundled:digits, an image folder, or Parquet with an image column) + its ReferenceSet."""
    return build_reference_set(source, extractor, reference, resolve_storage_options(storage_options), k_lof, k_rarity, index, device)


def ensure_reference(reference: str, extractor: str, source: str | None, storage_options: dict | None, device: str = "cpu") -> None:
    """Build the reference set from `source` if it is not there yet (a reference is built once, then reused)."""
    options = resolve_storage_options(storage_options)
    fs, path = fsspec.core.url_to_fs(f"{reference_url(reference, extractor)}/index/meta.json", **options)
    if fs.exists(path):
        return
    if source is None:
        raise InputError(f"no reference set at {reference_url(reference, extractor)}: run `minority-synth build-reference` or give reference_source")
    build_reference(source, reference, extractor=extractor, device=device, storage_options=storage_options)


@flow(name="score-run")
def score(run: str, reference: str, k_avg: int = 5, storage_options: dict | None = None) -> dict:
    """Score every committed features shard of a run that has no committed scores yet (resumable)."""
    from minority_core.metrics import ReferenceSet

    options = resolve_storage_options(storage_options)
    store = ShardStore(run, options)
    manifest = _manifest(store)
    extractor = manifest.config["extractor"]
    refset = ReferenceSet.load(f"{reference_url(reference, extractor)}/index", options)
    done = {r.index for r in manifest.records(f"scores/{extractor}") if store.verify(r)}
    todo = [r for r in manifest.records(f"features/{extractor}") if r.index not in done]
    futures = [score_shard.submit(store, refset, r, extractor, k_avg) for r in todo]
    for future in futures:
        manifest.add(future.result())
    store.write_manifest(manifest)
    get_run_logger().info("scored %d shards (%d already scored) with %s", len(todo), len(done), extractor)
    return {"run": run, "scored_shards": len(todo), "skipped_shards": len(done), "extractor": extractor}


@flow(name="filter")
def filter_samples(run: str, metric: str = "avgknn", top_q: float | None = 0.1, threshold: float | None = None, name: str | None = None,
                   storage_options: dict | None = None, per_prompt: bool = False) -> dict:
    """Keep the rarest samples by a score (top fraction, or above a threshold); writes a selection
    list `selections/<name>.parquet` (sample ids + score, + prompt for text-to-image runs), never a
    second copy of the images. `per_prompt`: the top fraction of each prompt's samples (at least
    one each), so every prompt contributes its own rare cases rather than the rarest prompt all."""
    if metric not in SCORE_COLUMNS:
        raise InputError(f"metric must be one of {', '.join(SCORE_COLUMNS)}, got {metric!r}")
    if (top_q is None) == (threshold is None):
        raise InputError("give exactly one of top_q (a fraction in (0, 1]) or threshold")
    if top_q is not None and not 0 < top_q <= 1:
        raise InputError(f"top_q must be in (0, 1], got {top_q}")
    if per_prompt and top_q is None:
        raise InputError("per_prompt selects a top fraction of each prompt's samples: give top_q, not threshold")
    store = ShardStore(run, resolve_storage_options(storage_options))
    manifest = _manifest(store)
    scores = read_kind(store, manifest.records(f"scores/{manifest.config['extractor']}"))
    if scores.num_rows == 0:
        raise InputError(f"{run} has no scores yet: run `minority-synth score` first")
    prompts = _prompts_by_score_row(store, manifest, scores)
    if per_prompt and prompts is None:
        raise InputError(f"{run} has no prompts (not a text-to-image run): drop per_prompt")
    values = np.nan_to_num(scores.column(metric).to_numpy(zero_copy_only=False), nan=-np.inf)
    if per_prompt:
        groups = np.asarray(prompts, dtype=object)
        keep = np.concatenate([_top(np.flatnonzero(groups == p), values, top_q) for p in dict.fromkeys(prompts)])
    elif top_q is not None:
        keep = _top(np.arange(len(values)), values, top_q)
    else:
        keep = np.flatnonzero(values > threshold)
    keep = np.sort(keep)
    columns = {"sample_id": scores.column("sample_id").take(keep), metric: scores.column(metric).take(keep)}
    if prompts is not None:
        columns["prompt"] = pa.array([prompts[i] for i in keep], pa.string())
    selection = pa.table(columns)
    name = name or (f"top-{top_q:g}-{metric}" + ("-per-prompt" if per_prompt else "") if top_q is not None else f"{metric}-above-{threshold:g}")
    record = store.write_shard(f"selections/{name}", 0, selection)
    return {"run": run, "selected": int(len(keep)), "of": int(scores.num_rows), "selection": store.url_of(record.path)}


@task(name="arm-result", cache_policy=NO_CACHE, persist_result=False)
def arm_result(run: str, reference_features: np.ndarray, storage_options: dict, name: str | None = None, seconds: float | None = None):
    """Everything the report shows for one arm, from its shards (scores, labels, images, set metrics)."""
    from minority_core.io import features_matrix
    from minority_core.metrics import density_coverage, fid_from_features, precision_recall
    from minority_core.report import ArmResult

    store = ShardStore(run, storage_options)
    manifest = _manifest(store)
    extractor = manifest.config["extractor"]
    scores = read_kind(store, manifest.records(f"scores/{extractor}"))
    samples = read_kind(store, manifest.records("samples"))
    features = features_matrix(read_kind(store, manifest.records(f"features/{extractor}")))
    if scores.num_rows != samples.num_rows:
        raise InputError(f"{run}: {scores.num_rows} scores for {samples.num_rows} samples; run `minority-synth score` first")
    images = np.stack([decode_png(cell["bytes"]) for cell in samples.column("image").to_pylist()])
    summary: dict = {"samples": samples.num_rows}
    # Each needs more than k rows on both sides; a run too small for one gets "—" in the report, not a crash.
    rows = min(len(reference_features), len(features))
    summary.update(precision_recall(reference_features, features, k=3) if rows > 3 else {"precision": None, "recall": None})
    summary.update(density_coverage(reference_features, features, k=5) if rows > 5 else {"density": None, "coverage": None})
    if len(features) > 1:
        summary["fid"] = fid_from_features(reference_features, features)
    model = manifest.config["model"]
    if model in RARE_CLASSES_BY_MODEL:
        from minority_core.metrics.features import DemoClassifierFeatures

        labels, confidence = DemoClassifierFeatures().predict(images)
        summary["rare_share"] = float(np.isin(labels, RARE_CLASSES_BY_MODEL[model]).mean())
        summary["confident_share"] = float((confidence > CONFIDENT).mean())
    if seconds is not None:
        summary["seconds_per_sample"] = seconds / samples.num_rows
    columns = {c: scores.column(c).to_numpy(zero_copy_only=False) for c in SCORE_COLUMNS}
    columns["in_support"] = scores.column("in_support").to_numpy(zero_copy_only=False)
    if scores.column("sample_id").to_pylist() != samples.column("sample_id").to_pylist():
        raise InputError(f"{run}: scores and samples are not in the same order; rerun `minority-synth score`")
    return ArmResult(name or manifest.config.get("arm", run), columns, summary, images, scores.column("sample_id").to_pylist(),
                     prompts=_prompts_of(samples))


@flow(name="report")
def report(runs: list[str], reference: str, out: str, title: str = "minority-synth report", seconds: list[float] | None = None, storage_options: dict | None = None) -> dict:
    """One HTML report comparing runs (arms) against a reference set; also Prefect artifacts."""
    from minority_core.report import build_report, write_report

    options = resolve_storage_options(storage_options)
    extractors = {_manifest(ShardStore(r, options)).config["extractor"] for r in runs}
    if len(extractors) != 1:
        raise InputError(f"runs were featurised with different extractors {sorted(extractors)}: report on runs with one extractor")
    extractor = extractors.pop()
    reference_features = load_reference_features(reference, extractor, options)
    arms = [arm_result(r, reference_features, options, seconds=None if seconds is None else seconds[i]) for i, r in enumerate(runs)]
    notes = [
        f"Features: {extractor}; reference set: {reference_url(reference, extractor)} ({len(reference_features)} real samples).",
        "AvgkNN (k=5), LOF (k=20), Rarity (k=3) against the reference; precision/recall k=3, density/coverage k=5.",
        f"FID is the Fréchet distance in the {extractor} feature space" + ("" if extractor == "inception-pool3" else " (not Inception: compare only within this report)") + ".",
    ]
    if any("rare_share" in a.summary for a in arms):
        notes.append(f"Rare-class share and confidence use the bundled digit classifier's predictions (pseudo-labels); confident = max softmax > {CONFIDENT}.")
    built = build_report(arms, title, notes=notes)
    store = ShardStore(out, options)
    store.check_writable()
    index = write_report(built, store.fs, store.root)
    url = store.fs.unstrip_protocol(index)
    create_table_artifact(built.table, key="minority-report-table", description=title)
    create_markdown_artifact(built.markdown, key="minority-report", description=title)
    create_link_artifact(url, link_text="report/index.html", key="minority-report-link")
    for position, (arm, rows) in enumerate(built.by_prompt.items()):
        create_table_artifact(rows, key=f"minority-report-prompts-{position}-{_artifact_slug(arm)}", description=f"{title}: {arm}, by prompt")
    get_run_logger().info("report written to %s", url)
    return {"report": url, "table": built.table, "by_prompt": built.by_prompt}


def _top(rows: np.ndarray, values: np.ndarray, top_q: float) -> np.ndarray:
    """The top `top_q` fraction of `rows` by value (at least one; ties keep the earlier row)."""
    order = rows[np.argsort(-values[rows], kind="stable")]
    return order[: max(1, int(round(top_q * len(rows))))]


def _prompts_by_score_row(store: ShardStore, manifest, scores: pa.Table) -> list[str] | None:
    """Each scored sample's prompt (None for runs without prompts), matched by sample id. Only a
    text-to-image run (prompts in its recorded sampler config) has its samples shards read."""
    if not (manifest.config.get("sampler") or {}).get("prompts"):
        return None
    samples = read_kind(store, manifest.records("samples"))
    prompts = _prompts_of(samples)
    if prompts is None:
        return None
    by_id = dict(zip(samples.column("sample_id").to_pylist(), prompts))
    return [by_id[i] for i in scores.column("sample_id").to_pylist()]


def _prompts_of(samples: pa.Table) -> list[str] | None:
    """The samples' prompts in row order; None unless every sample has one (a text-to-image run)."""
    if samples.num_rows == 0 or "prompt" not in samples.column_names or samples.column("prompt").null_count:
        return None
    return samples.column("prompt").to_pylist()


def _artifact_slug(name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    import re

    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "arm"


def _manifest(store: ShardStore):
    manifest = store.read_manifest()
    if manifest is None:
        raise InputError(f"no run at {store.url}: no manifest.json (run `minority-synth synthesize` first)")
    return manifest
