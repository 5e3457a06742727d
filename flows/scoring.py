"""Flows that score what `synthesize` wrote: build a reference set, score, filter, report.

Reference-side work (self-kNN radii, LOF densities) happens once in `build_reference`; scoring a
run is then one batched FAISS query per shard, on Ray actors that each load the reference set
once (tasks/score_pool.py). Reports and filters read score columns and decode only the images
they show (minority_core/runs/results.py), so their memory does not grow with the run. Each step
reads and writes only storage, so any of them can run alone
(`minority-synth score|filter|report|build-reference`).
"""

from __future__ import annotations

import base64
import re

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from flows.runtime import artifact, in_flow_run, run_logger, run_task
from minority_core.config import resolve_storage_options
from minority_core.errors import InputError, LeaseHeldError, MissingFileError, StorageError
from minority_core.io import ShardStore
from minority_core.io.lease import Lease, wait_released
from minority_core.runs.reference import load_reference_features, reference_accuracy, reference_digest, reference_exists, reference_url
from minority_core.runs.results import CONFIDENT
from minority_core.runs.scoring import check_committed, open_run, record_scoring, unscored
from minority_core.runs.select import check_rule, select_rarest
from tasks.score_pool import ScorePool
from tasks.scoring import arm_result, build_reference_set, score_shards

DEFAULT_SCORE_WORKERS = 2  # like synthesize's default; the scoring at the end of a run uses it too
REFERENCE_WAIT_S = 3600.0  # how long a run waits for a reference set another run is building
SCORE_ROUNDS = 3  # a scoring, then up to two more for scores storage lost meanwhile, before it fails naming them


def _named(step: str, parameter: str):
    """A flow run name `<step>-<last part of the parameter's path>` (`score-digits-20261201-...`),
    so the UI lists readable subflows instead of random names."""
    def name() -> str:
        value = flow_run.parameters.get(parameter)
        value = value[0] if isinstance(value, list | tuple) and value else value
        return f"{step}-{str(value or '').rstrip('/').rsplit('/', 1)[-1] or step}"[:100]

    return name


def make_reference(source: str, reference: str, extractor: str = "demo-classifier", k_lof: int = 20, k_rarity: int = 3, index: str = "auto", device: str = "cpu", storage_options: dict | None = None,
                   overwrite: bool = False) -> dict:
    """Features of a real dataset (bundled:digits, an image folder, or Parquet with an image column) + its ReferenceSet;
    a set already built there is refused unless `overwrite`."""
    return run_task(build_reference_set, source, extractor, reference, resolve_storage_options(storage_options), k_lof, k_rarity, index, device, overwrite)


build_reference = flow(name="build-reference-set", flow_run_name=_named("reference", "reference"))(make_reference)


def ensure_reference(reference: str, extractor: str, source: str | None, storage_options: dict | None, device: str = "cpu") -> None:
    """Build the reference set from `source` if it is not there yet (a reference is built once, then reused)."""
    if reference_exists(reference, extractor, resolve_storage_options(storage_options)):
        return
    if source is None:
        raise InputError(f"no reference set at {reference_url(reference, extractor)}: run `minority-synth build-reference` or give reference_source")
    try:
        make_reference(source, reference, extractor=extractor, device=device, storage_options=storage_options)
    except InputError:  # built by another run between the look and the lease: use it
        if not reference_exists(reference, extractor, resolve_storage_options(storage_options)):
            raise
    except LeaseHeldError:  # another run is building this very reference: use it once it is done
        url = reference_url(reference, extractor)
        run_logger().info("waiting for the reference set at %s, which another run is building", url)
        wait_released(ShardStore(url, resolve_storage_options(storage_options)), REFERENCE_WAIT_S)
        if not reference_exists(reference, extractor, resolve_storage_options(storage_options)):
            raise


def score_run(run: str, reference: str, k_avg: int = 5, storage_options: dict | None = None, workers: int | None = None,
          ray_address: str | None = None) -> dict:
    """Score every committed features shard of a run that has no committed scores yet (resumable
    per shard), on `workers` Ray actors that each load the reference set once; `workers=0` scores
    in-process. Default: DEFAULT_SCORE_WORKERS actors, or in-process for a memory:// run."""
    options = resolve_storage_options(storage_options)
    store, manifest = open_run(run, options)
    extractor = manifest.config["extractor"]
    if not reference_exists(reference, extractor, options):
        raise MissingFileError(f"no reference set at {reference_url(reference, extractor)}: run `minority-synth build-reference` first")
    workers = score_workers(store, workers)
    reference_index = f"{reference_url(reference, extractor)}/index"
    with Lease.acquire(store, "score") as lease:  # a second scorer of this run fails at once; synthesize's own scoring shares its lease
        store.lease = lease
        check_committed(store, manifest, ("samples", f"features/{extractor}"))  # the samples it scores exist
        todo, done = unscored(store, manifest)  # (it removes uncommitted score files: only under the lease)
        skipped, scored = done, 0
        record_scoring(store, manifest, reference_index, k_avg, reference_digest(reference_index, options))  # one reference and k per run's scores, or one line
        for _ in range(SCORE_ROUNDS):  # again for scores storage lost meanwhile (one listing tells)
            if not todo:
                break
            worker = dict(run=store.url, reference_index=reference_index, extractor=extractor, k_avg=k_avg, storage_options=options)
            pool = ScorePool(worker, workers, ray_address)
            try:
                run_task(score_shards, pool, quote(store), quote(manifest), quote(todo)) if in_flow_run() else score_shards.fn(pool, store, manifest, todo)
            finally:
                pool.shutdown()
            scored += len(todo)
            todo, _ = unscored(store, manifest)
        if todo:
            raise StorageError(f"{store.url}: scores of {', '.join(r.key for r in todo[:3])} disappeared from storage again after being "
                               f"written {SCORE_ROUNDS} times: check what deletes files under it, then rerun `minority-synth score`")
    run_logger().info("scored %d shards (%d already scored) with %s on %s", scored, skipped, extractor,
                          f"{workers} Ray actor(s)" if workers else "this process")
    return {"run": run, "scored_shards": scored, "skipped_shards": skipped, "extractor": extractor}


score = flow(name="score-run", flow_run_name=_named("score", "run"))(score_run)


def score_workers(store: ShardStore, workers: int | None) -> int:
    """How many score actors: as asked, else DEFAULT_SCORE_WORKERS; a memory:// run lives in this
    process only, so it is scored here (0) and refused with actors."""
    in_memory = "memory" in ((store.fs.protocol,) if isinstance(store.fs.protocol, str) else tuple(store.fs.protocol))
    if workers is None:
        return 0 if in_memory else DEFAULT_SCORE_WORKERS
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"workers must be an integer ≥ 0 (0 = in-process), got {workers!r}")
    if workers and in_memory:
        raise InputError(f"{store.url} is in this process's memory, which Ray actors cannot see: score it with workers=0")
    return workers


def select_samples(run: str, metric: str = "avgknn", top_q: float | None = 0.1, threshold: float | None = None, name: str | None = None,
                   storage_options: dict | None = None, per_prompt: bool = False, in_support: bool = False,
                   min_confidence: float | None = None) -> dict:
    """Keep the rarest eligible samples by a score; see `minority_core.runs.select.select_rarest`."""
    check_rule(metric, top_q, threshold, per_prompt, min_confidence)
    store, manifest = open_run(run, resolve_storage_options(storage_options))
    return {**select_rarest(store, manifest, metric, top_q, threshold, name, per_prompt, in_support, min_confidence), "run": run}


filter_samples = flow(name="filter", flow_run_name=_named("filter", "run"))(select_samples)


def report_runs(runs: list[str], reference: str, out: str, title: str = "minority-synth report", seconds: list[float] | None = None, storage_options: dict | None = None,
           artifact_prefix: str | None = None) -> dict:
    """One HTML report comparing runs (arms) against a reference set; also Prefect artifacts,
    whose keys start with `artifact_prefix` (default `minority`)."""
    from minority_core.report import build_report, write_report

    options = resolve_storage_options(storage_options)
    extractors = {open_run(r, options)[1].config["extractor"] for r in runs}
    if len(extractors) != 1:
        raise InputError(f"runs were featurised with different extractors {sorted(extractors)}: report on runs with one extractor")
    extractor = extractors.pop()
    reference_features = load_reference_features(reference, extractor, options)
    arms = [run_task(arm_result, r, reference_features, options, seconds=None if seconds is None else seconds[i]) for i, r in enumerate(runs)]
    notes = [
        f"Features: {extractor}; reference set: {reference_url(reference, extractor)} ({len(reference_features)} real samples).",
        "AvgkNN (k=5), LOF (k=20), Rarity (k=3) against the reference; precision/recall k=3, density/coverage k=5.",
        f"FID is the Fréchet distance in the {extractor} feature space" + ("" if extractor == "inception-pool3" else " (not Inception: compare only within this report)") + ".",
    ]
    if any("rare_share" in a.summary for a in arms):
        notes.append(f"Rare-class share and confidence use the bundled digit classifier's predictions (pseudo-labels); confident = max softmax > {CONFIDENT}.")
    built = build_report(arms, title, notes=notes, knn_accuracy=reference_accuracy(reference, extractor, options))
    store = ShardStore(out, options)
    store.check_writable()
    index = write_report(built, store.fs, store.root)
    url = browser_url(store, index)
    prefix = _artifact_slug(artifact_prefix or "minority")
    artifact(create_table_artifact, built.table, key=f"{prefix}-report-table", description=title)
    artifact(create_markdown_artifact, rendered_markdown(built, url), key=f"{prefix}-report", description=title)
    artifact(create_link_artifact, url, link_text="report/index.html", key=f"{prefix}-report-link")
    for position, (arm, rows) in enumerate(built.by_prompt.items()):
        artifact(create_table_artifact, rows, key=f"{prefix}-report-prompts-{position}-{_artifact_slug(arm)}", description=f"{title}: {arm}, by prompt")
    run_logger().info("report written to %s", url)
    return {"report": url, "table": built.table, "by_prompt": built.by_prompt}


report = flow(name="report", flow_run_name=_named("report", "out"))(report_runs)


RENDERED_IMAGE_BYTES = 4 * 2**20  # the report's images inlined into its markdown artifact, at most this much


def rendered_markdown(built, url: str) -> str:
    """The report as a markdown artifact the Prefect UI shows by itself: its text, table and
    images inline (data: URIs, up to RENDERED_IMAGE_BYTES), so reading it needs no file access;
    then the link to the full page."""
    parts, budget = [built.markdown, ""], RENDERED_IMAGE_BYTES
    for name, png in built.pngs.items():
        if len(png) > budget:
            parts.append(f"*{name}: not inlined (over the artifact's image budget); see the full report.*")
            continue
        budget -= len(png)
        parts.append(f"**{name}**\n\n![{name}](data:image/png;base64,{base64.b64encode(png).decode()})\n")
    parts.append(f"Full report: [{url}]({url})")
    return "\n".join(parts)


def browser_url(store: ShardStore, path: str, expires_s: int = 7 * 24 * 3600) -> str:
    """A URL a browser opens: a presigned https URL on object storage (S3, GCS), else the path's URL."""
    protocols = (store.fs.protocol,) if isinstance(store.fs.protocol, str) else tuple(store.fs.protocol)
    if any(p in ("s3", "s3a", "gs", "gcs") for p in protocols):
        try:
            return store.fs.sign(path, expiration=expires_s)
        except (NotImplementedError, ValueError, OSError):
            pass
    return store.fs.unstrip_protocol(path)


def _artifact_slug(name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "arm"
