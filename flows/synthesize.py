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
from prefect.futures import as_completed, wait
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm.auto import tqdm

from minority_core.config import SynthesisConfig
from tasks.ray_pool import ActorPool, InProcessPool
from tasks.synthesis import ManifestCommitter, features_kind, generate_shard, open_store, plan_shards, progress_reporter


def _run_name() -> str:
    config = flow_run.parameters.get("config") or {}
    if isinstance(config, SynthesisConfig):
        config = config.model_dump()
    model = str((config.get("model") or {}).get("spec", "model")).replace(":", "-").replace("/", "-")[-40:]
    arm = (config.get("output") or {}).get("arm", "run")
    return f"{arm}-{model}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"


def make_pool(config: SynthesisConfig):
    worker_kwargs = dict(config=config.model_dump(mode="json"), storage_options=config.full_storage_options())
    if config.execution.workers == 0:
        return InProcessPool(worker_kwargs)
    return ActorPool(worker_kwargs, config.execution.workers, config.execution.ray_address)


@flow(name="synthesize-run", flow_run_name=_run_name, task_runner=ThreadPoolTaskRunner(max_workers=64), log_prints=True)
def synthesize(config: SynthesisConfig, progress: bool = False) -> dict:
    """Generate `config.output.num_samples` samples as Parquet shards under `config.output.out`; resumable."""
    logger = get_run_logger()
    start = time.monotonic()
    o = config.output
    plan = plan_shards(config)
    store = open_store(config)
    progress_id = create_progress_artifact(100.0 * plan.done / plan.total, key=f"synthesis-progress-{o.arm}", description=f"shards committed of {plan.total}")
    committer = ManifestCommitter(store, plan.manifest, plan.total, progress_reporter(progress_id))
    results = []
    if plan.pending:
        pool = make_pool(config)
        bar = tqdm(total=plan.total, initial=plan.done, desc=f"shards ({o.arm})", unit="shard", disable=not progress)
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
            wait(in_flight, timeout=120)  # their workers are gone or finishing
            committer.discard_uncommitted(("samples", features_kind(config)), logger)
            raise
        finally:
            bar.close()
            pool.shutdown()
    report_url = None
    if o.reference:
        from flows.scoring import ensure_reference, report, score

        ensure_reference(o.reference, o.extractor, o.reference_source, o.storage_options, config.execution.device)
        score(o.out, o.reference, storage_options=o.storage_options)
        report_url = report([o.out], o.reference, o.out, title=f"minority-synth: {o.arm} ({config.model.spec})", storage_options=o.storage_options)["report"]
    seconds = time.monotonic() - start
    generated = sum(r.samples.rows for r in results)
    summary = {
        "out": o.out,
        "arm": o.arm,
        "model": config.model.spec,
        "samples": sum(r.rows for r in plan.manifest.records("samples")),
        "shards": plan.total,
        "generated_shards": len(results),
        "skipped_shards": plan.total - len(results),
        "seconds": round(seconds, 2),
        "seconds_per_sample": sum(r.seconds for r in results) / generated if generated else None,
        "manifest": store.url_of("manifest.json"),
        "report": report_url,
    }
    create_markdown_artifact(_summary_markdown(config, summary), key=f"synthesis-summary-{o.arm}", description="synthesis run summary")
    logger.info("synthesis done: %s", summary)
    return summary


def _summary_markdown(config: SynthesisConfig, summary: dict) -> str:
    sampler = config.sampler
    g = sampler.guidance
    guidance = "none (standard sampling)" if g is None else f"w={g.scale}, perturb_ratio={g.perturb_ratio}, every={g.every}, stop_ratio={g.stop_ratio}, {g.scale_type}, {g.distance}"
    return "\n".join([
        f"# Synthesis run: {config.output.arm}",
        "",
        "| field | value |",
        "|---|---|",
        f"| model | `{config.model.spec}` |",
        f"| sampler | {sampler.sampler}, {sampler.steps} steps |",
        f"| guidance | {guidance} |",
        f"| samples | {summary['samples']} in {summary['shards']} shards ({summary['generated_shards']} generated, {summary['skipped_shards']} resumed) |",
        f"| output | `{config.output.out}` |",
        f"| wall time | {summary['seconds']} s |",
    ])
