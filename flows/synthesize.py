"""The main job: plan shards → generate them on Ray actors → commit each → manifest → summary.

Runs under Prefect (the ephemeral API when no server is configured). Ray is started in the
flow's own (main) thread. The work is a few Prefect task runs whatever the shard count: one
`generate-lane` per actor, run in threads, each pulling shards from one shared queue and
committing them; progress reaches the UI through a rate-limited progress artifact.
"""

from __future__ import annotations

import os
import time
from concurrent import futures
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm.auto import tqdm

from minority_core.config import SynthesisConfig
from minority_core.errors import StorageError
from minority_core.io.lease import Lease
from minority_core.runs.plan import resolve_out
from tasks.ray_address import check_ray_address
from tasks.ray_pool import ActorPool, ClusterLostError, InProcessPool
from tasks.synthesis import LaneTotals, ManifestCommitter, Progress, ShardQueue, features_kind, generate_lane, open_store, plan_missing, plan_shards

MAX_LANES = 1024  # threads for lanes, one per actor (one per GPU on a cluster); created only as lanes start
GROW_EVERY_S = 5.0  # how often the flow looks for room to replace a worker lost with its node
VERIFY_ROUNDS = 2  # times the end-of-run check regenerates committed shards storage lost, before it fails naming them


def _run_name() -> str:
    config = flow_run.parameters.get("config") or {}
    if isinstance(config, SynthesisConfig):
        config = config.model_dump()
    model = str((config.get("model") or {}).get("spec", "model")).replace(":", "-").replace("/", "-")[-40:]
    output = config.get("output") or {}
    folder = str(output.get("out", "")).rstrip("/").rsplit("/", 1)[-1]
    return f"{output.get('arm', 'run')}-{folder or model}"[:100]


def make_pool(config: SynthesisConfig):
    worker_kwargs = dict(config=config.model_dump(mode="json"), storage_options=config.full_storage_options())
    if config.execution.workers == 0:
        return InProcessPool(worker_kwargs)
    return ActorPool(worker_kwargs, config.execution.workers, config.execution.ray_address)


def run_lanes(pool, lanes: list, work: ShardQueue, committer: ManifestCommitter, logger) -> LaneTotals:
    """Wait for the lanes (appending to `lanes` those started later), merging what they made.

    A lane's error is a shard's, after that shard's retries, and is raised as soon as its lane
    ends. A lane whose actor went with its node ends early, its shards back in the queue: while
    shards are left, each idle actor gets a new lane, including one the pool starts where the
    cluster has room again (`pool.grow`). Shards left with no actor at all: `ClusterLostError`.
    """
    totals = LaneTotals()
    running = {lane.wrapped_future: lane for lane in lanes}
    while running or work.remaining():
        if running:
            finished, _ = futures.wait(running, timeout=GROW_EVERY_S, return_when=futures.FIRST_COMPLETED)
            for done in finished:
                totals.merge(running.pop(done).result())
        if not work.remaining():
            continue
        if pool.grow() is not None:
            logger.info("the Ray cluster has room again: a new worker joins the run (%d now)", len(pool.actors))
        while len(running) < len(pool.actors):  # an idle actor and shards left (a lane lost its actor after the others ended)
            lane = generate_lane.submit(pool, len(lanes), work, committer)
            lanes.append(lane)
            running[lane.wrapped_future] = lane
        if not running:
            raise ClusterLostError(f"every Ray worker of the run was lost with its node; {work.remaining()} shards were not generated: "
                                   "rerun the same command to resume once the cluster has CPUs again")
    return totals


LANE_RUNNER = ThreadPoolTaskRunner(max_workers=MAX_LANES)  # a flow that calls `run_synthesis` runs its lanes with this


def run_synthesis(config: SynthesisConfig, progress: bool = False, progress_artifact: UUID | None = None, artifact_prefix: str | None = None) -> dict:
    """Generate `config.output.num_samples` samples as Parquet shards under `config.output.out`,
    then score and report them if the config names a reference; resumable. Runs inside a flow run
    whose task runner is LANE_RUNNER (`synthesize`, or a dataset run calling it directly, so that
    everything shows on the run the user triggered).

    `progress_artifact`: a progress artifact to update instead of a new one; `artifact_prefix`:
    the artifacts' keys start with it (a dataset's name, so datasets do not overwrite each
    other's cards). The run holds OUT's write lease throughout: a second writer fails at once."""
    out = resolve_out(config.output.out, config.execution.workers)  # memory:// with actors refused, file://rel made absolute
    if out != config.output.out:
        config = config.replace(out=out)
    if config.execution.workers:
        check_ray_address(config.execution.ray_address or os.environ.get("RAY_ADDRESS"))  # in seconds, before anything is written
    store = open_store(config)
    with Lease.acquire(store, "synthesize") as lease:  # before the plan, which tidies the folder
        store.lease = lease
        return _synthesize_holding_lease(config, store, progress, progress_artifact, artifact_prefix)


def _synthesize_holding_lease(config: SynthesisConfig, store, progress: bool, progress_artifact: UUID | None, artifact_prefix: str | None) -> dict:
    logger = get_run_logger()
    start = time.monotonic()
    o = config.output
    plan = plan_shards(config)
    prefix = artifact_prefix or "synthesis"
    if progress_artifact is None:
        progress_id = create_progress_artifact(100.0 * plan.done / plan.total, key=f"{prefix}-progress-{o.arm}", description=f"shards committed of {plan.total}")
    else:
        progress_id = progress_artifact
        update_progress_artifact(progress_id, 100.0 * plan.done / plan.total)
    totals = LaneTotals()
    pending = plan.pending
    for round_ in range(VERIFY_ROUNDS + 1):
        if pending:
            totals.merge(_generate(config, store, plan, pending, progress_id, progress, logger))
        # Storage may lose committed shards while the run goes on (a bucket recreated, a file
        # deleted): one listing per kind, as a resume does, and what is gone is made again.
        pending = plan_missing(config, store, plan.manifest) if totals.shards else pending  # a plain resume: its plan just listed them
        if not pending:
            break
        if round_ == VERIFY_ROUNDS:
            lost = ", ".join(f"{s.index:05d}" for s in pending[:5]) + (f" and {len(pending) - 5} more" if len(pending) > 5 else "")
            raise StorageError(f"{store.url}: committed shard(s) {lost} disappeared from storage again after being regenerated "
                               f"{VERIFY_ROUNDS} time(s): check what deletes files under it, then rerun the same command to resume")
        logger.warning("%d committed shard(s) are missing from %s at the end of the run: regenerating them", len(pending), store.url)
    report_url = None
    if o.reference:
        from flows.scoring import ensure_reference, report_runs, score_run

        ensure_reference(o.reference, o.extractor, o.reference_source, o.storage_options, config.execution.device)
        # scored where it was generated: in-process for workers=0, else on the same cluster's actors
        score_run(o.out, o.reference, storage_options=o.storage_options, workers=config.execution.workers,
                  ray_address=config.execution.ray_address)
        report_url = report_runs([o.out], o.reference, o.out, title=f"minority-synth: {o.arm} ({config.model.spec})", storage_options=o.storage_options,
                            artifact_prefix=artifact_prefix)["report"]
    seconds = time.monotonic() - start
    summary = {
        "out": o.out,
        "arm": o.arm,
        "model": config.model.spec,
        "samples": sum(r.rows for r in plan.manifest.records("samples")),
        "shards": plan.total,
        "generated_shards": totals.shards,
        "skipped_shards": plan.done,
        "seconds": round(seconds, 2),
        "seconds_per_sample": totals.seconds / totals.rows if totals.rows else None,
        "manifest": store.url_of("manifest.json"),
        "report": report_url,
    }
    key = f"{artifact_prefix}-summary" if artifact_prefix else f"synthesis-summary-{o.arm}"
    create_markdown_artifact(_summary_markdown(config, summary), key=key, description=f"{o.arm} run summary")
    logger.info("synthesis done: %s", summary)
    return summary


def _generate(config: SynthesisConfig, store, plan, pending, progress_id, progress: bool, logger) -> LaneTotals:
    """Make the `pending` shards on the pool's workers, committing each; on failure stop, and
    remove what was written but not committed."""
    o = config.output
    done = plan.total - len(pending)
    pool = make_pool(config)
    bar = tqdm(total=plan.total, initial=done, desc=f"shards ({o.arm})", unit="shard", disable=not progress)
    reporter = Progress(progress_id, plan.total, done, logger, bar)
    committer = ManifestCommitter(store, plan.manifest, plan.total, reporter)
    work = ShardQueue(pending)
    lanes: list = []
    try:
        lanes += [generate_lane.submit(pool, lane, work, committer) for lane in range(len(pool.actors))]
        totals = run_lanes(pool, lanes, work, committer, logger)
    except BaseException:
        work.stop()
        committer.close()
        pool.shutdown()
        wait(lanes, timeout=120)  # their workers are gone or finishing
        committer.discard_uncommitted(("samples", features_kind(config)), logger)
        raise
    finally:
        bar.close()
        pool.shutdown()
    reporter.finish(committer.committed_count())  # the committer stored the snapshot manifest with its last shard
    return totals


synthesize = flow(name="synthesize-run", flow_run_name=_run_name, task_runner=LANE_RUNNER, log_prints=True)(run_synthesis)


def _summary_markdown(config: SynthesisConfig, summary: dict) -> str:
    report = f"[report/index.html]({summary['report']})" if summary.get("report") else "none (no reference)"
    sampler = config.sampler
    g = sampler.guidance
    guidance = "none (standard sampling)" if g is None else f"w={g.scale}, perturb_ratio={g.perturb_ratio}, every={g.every}, stop_ratio={g.stop_ratio}, {g.scale_type}, distance {g.distance}"
    return "\n".join([
        f"# Synthesis run: {config.output.arm}",
        "",
        "| field | value |",
        "|---|---|",
        f"| model | `{config.model.spec}` |",
        f"| sampler | {sampler.sampler}, {sampler.steps} steps |",
        f"| guidance | {guidance} |",
        f"| samples | {summary['samples']} in {summary['shards']} shards ({summary['generated_shards']} generated, {summary['skipped_shards']} resumed) |",
        f"| seed | {config.output.seed} |",
        f"| output | `{config.output.out}` |",
        f"| report | {report} |",
        f"| wall time | {summary['seconds']} s |",
    ])
