"""The main job: plan shards → generate them on Ray actors → commit each → manifest → summary.

Runs under Prefect (the ephemeral API when no server is configured). Ray is started in the
flow's own (main) thread; the per-shard Prefect tasks run in threads and each borrows an idle
actor, so there are never more shards in flight than actors, and each shard is one task run.
"""

from __future__ import annotations

import datetime as dt
import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm.auto import tqdm

from minority_core.config import SynthesisConfig
from tasks.ray_pool import ActorPool, InProcessPool
from tasks.synthesis import ManifestCommitter, generate_shard, open_store, plan_shards


def _run_name() -> str:
    config = flow_run.parameters.get("config") or {}
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    model = str(get("model", "model")).replace(":", "-").replace("/", "-")[-40:]
    return f"{get('arm', 'run')}-{model}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"


def make_pool(config: SynthesisConfig):
    worker_kwargs = dict(
        model_spec=config.model,
        sampler_config=config.sampler_config().to_dict(),
        store_url=config.out,
        storage_options=config.full_storage_options(),
        device=config.device,
        extractor=config.resolved_extractor(),
        model_options=config.model_options() or None,
        arm=config.arm,
    )
    if config.workers == 0:
        return InProcessPool(worker_kwargs)
    return ActorPool(worker_kwargs, config.workers, config.ray_address)


@flow(name="synthesize-run", flow_run_name=_run_name, task_runner=ThreadPoolTaskRunner(max_workers=64), log_prints=True)
def synthesize(config: SynthesisConfig, progress: bool = False) -> dict:
    """Generate `config.num_samples` samples as Parquet shards under `config.out`; resumable."""
    logger = get_run_logger()
    start = time.monotonic()
    plan = plan_shards(config)
    store = open_store(config)
    progress_id = create_progress_artifact(100.0 * (plan.total - len(plan.pending)) / plan.total, key=f"synthesis-progress-{config.arm}", description=f"shards committed of {plan.total}")
    committer = ManifestCommitter(store, plan.manifest, plan.total, progress_id)
    results = []
    if plan.pending:
        pool = make_pool(config)
        bar = tqdm(total=plan.total, initial=plan.total - len(plan.pending), desc=f"shards ({config.arm})", unit="shard", disable=not progress)
        in_flight = []
        try:
            queue = list(plan.pending)
            while queue or in_flight:
                while queue and len(in_flight) < len(pool.actors):
                    in_flight.append(generate_shard.submit(pool, queue.pop(0), committer))
                done = next(as_completed(in_flight))
                in_flight.remove(done)
                results.append(done.result())  # raises the task's error after its retries
                bar.update(1)
        except BaseException:
            committer.close()
            pool.shutdown()
            _discard_uncommitted(store, committer, in_flight, config, logger)
            raise
        finally:
            bar.close()
            pool.shutdown()
    report_url = None
    if config.reference:
        from flows.scoring import ensure_reference, report, score

        ensure_reference(config.reference, config.resolved_extractor(), config.reference_source, config.storage_options, config.device)
        score(config.out, config.reference, storage_options=config.storage_options)
        report_url = report([config.out], config.reference, config.out, title=f"minority-synth: {config.arm} ({config.model})", storage_options=config.storage_options)["report"]
    seconds = time.monotonic() - start
    generated = sum(r.samples.rows for r in results)
    summary = {
        "out": config.out,
        "arm": config.arm,
        "model": config.model,
        "samples": sum(r.rows for r in plan.manifest.records("samples")),
        "shards": plan.total,
        "generated_shards": len(results),
        "skipped_shards": plan.total - len(results),
        "seconds": round(seconds, 2),
        "seconds_per_sample": sum(r.seconds for r in results) / generated if generated else None,
        "manifest": store.url_of("manifest.json"),
        "report": report_url,
    }
    create_markdown_artifact(_summary_markdown(config, summary), key=f"synthesis-summary-{config.arm}", description="synthesis run summary")
    logger.info("synthesis done: %s", summary)
    return summary


def _discard_uncommitted(store, committer, in_flight, config: SynthesisConfig, logger) -> None:
    """After a failure: let the shards in flight end (their workers are gone or finishing), then
    remove the shard files the manifest does not list, so a failed run leaves only committed,
    verified shards. Best effort: the run's own error is what the caller must see."""
    from prefect.futures import wait

    from tasks.synthesis import SAMPLES, remove_uncommitted

    try:
        wait(in_flight, timeout=120)
        manifest = committer.manifest
        stored = store.read_manifest()  # a manifest write that raised may still have landed: keep what it lists
        if stored is not None:
            for record in stored.shards.values():
                if record.key not in manifest.shards:
                    manifest.add(record)
        removed = remove_uncommitted(store, manifest, (SAMPLES, f"features/{config.resolved_extractor()}"))
        if removed:
            logger.warning("run failed: removed %d uncommitted shard file(s): %s", len(removed), ", ".join(removed))
    except Exception as exc:
        logger.warning("run failed; uncommitted shard files may remain until the next run (%s)", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _summary_markdown(config: SynthesisConfig, summary: dict) -> str:
    sampler = config.sampler_config()
    g = sampler.guidance
    guidance = "none (standard sampling)" if g is None else f"w={g.scale}, perturb_ratio={g.perturb_ratio}, every={g.every}, stop_ratio={g.stop_ratio}, {g.scale_type}, {g.distance}"
    return "\n".join([
        f"# Synthesis run: {config.arm}",
        "",
        "| field | value |",
        "|---|---|",
        f"| model | `{config.model}` |",
        f"| sampler | {sampler.sampler}, {sampler.steps} steps |",
        f"| guidance | {guidance} |",
        f"| samples | {summary['samples']} in {summary['shards']} shards ({summary['generated_shards']} generated, {summary['skipped_shards']} resumed) |",
        f"| output | `{config.out}` |",
        f"| wall time | {summary['seconds']} s |",
    ])
