"""Flows that deployments run: a dataset name plus overrides → a full synthesis (+ score + report).

These are what `minority-synth deploy` and `deployments/serve.py` expose as
`synthesize/<dataset>`, `build-reference/<dataset>` and `score/<dataset>`.

A dataset run's identity comes from its flow run, fixed before the first attempt: the output
folder and the flow run's name are `<dataset>-<expected start, UTC>-<run id[:8]>` (Prefect sets
the expected start once, when the run is first scheduled), and the seed is drawn from the run
id unless the dataset file pins one. So two runs of a dataset differ, and a retry (Prefect's,
or a rerun of the same flow run from the UI) resumes its own folder. Everything a user looks at
is on the run they triggered: the progress, the summary (seed, folder, report) and the report's
table, under keys of the dataset; the subflows carry the dataset's tags.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import uuid

from prefect import flow, get_run_logger, tags
from prefect.artifacts import create_progress_artifact
from prefect.runtime import flow_run

from flows.scoring import build_reference, report_runs, score
from flows.synthesize import LANE_RUNNER, run_synthesis
from minority_core.config.datasets import get_dataset
from minority_core.config.resources import check_fits_here
from tasks.storage_blocks import use_storage_block


def dataset_run_name(dataset: str, flow_run_id: str, expected_start: dt.datetime) -> str:
    """The folder and flow run name of one run of `dataset`: the same on every attempt."""
    return f"{dataset}-{expected_start.astimezone(dt.UTC):%Y%m%d-%H%M%S}-{str(flow_run_id)[:8]}"


def dataset_run_seed(flow_run_id: str) -> int:
    """A seed of this flow run only (31 bits: numpy and torch take it everywhere)."""
    return int.from_bytes(hashlib.sha256(str(flow_run_id).encode()).digest()[:4], "big") >> 1


def _this_run() -> tuple[str, dt.datetime]:
    """This flow run's id and expected start (a fresh id and now outside Prefect)."""
    run_id = flow_run.get_id() or str(uuid.uuid4())
    return run_id, flow_run.get_scheduled_start_time()


def _dataset_run_name() -> str:
    return dataset_run_name(flow_run.parameters.get("dataset", "dataset"), *_this_run())


def _dataset_task_name() -> str:
    return f"{flow_run.parameters.get('dataset', 'dataset')}-{_this_run()[0][:8]}"


FAILURE_BLOCK_ENV = "MINORITY_FAILURE_BLOCK"  # a Prefect notification block, `<block type slug>/<name>` (e.g. slack-webhook/data-team)


def notify_failure(flow, flow_run, state) -> None:
    """on_failure hook of a dataset run (after its retries): a message through the notification
    block named by $MINORITY_FAILURE_BLOCK (Slack, Teams, e-mail, any webhook: Prefect's own
    blocks). A hook never raises: a broken block is a log line, not a second failure."""
    name = os.environ.get(FAILURE_BLOCK_ENV)
    if not name:
        return
    from prefect.blocks.core import Block

    subject = f"minority-synth: {flow_run.name} failed"
    body = f"{flow.name} run {flow_run.name} ({flow_run.id}) ended {state.name}: {state.message}. Tags: {', '.join(flow_run.tags)}."
    try:
        Block.load(name).notify(body=body, subject=subject)
    except Exception as exc:  # the run has failed already: say why the notice did not go out
        logging.getLogger("minority_synth").error("could not notify through block %r: %s", name, exc)


@flow(name="synthesize", flow_run_name=_dataset_run_name, retries=1, retry_delay_seconds=30, task_runner=LANE_RUNNER, on_failure=[notify_failure])
def synthesize_dataset(
    dataset: str,
    num_samples: int | None = None,
    shard_size: int | None = None,
    guidance_scale: float | None = None,
    steps: int | None = None,
    seed: int | None = None,
    workers: int | None = None,
    out: str | None = None,
) -> dict:
    """Synthesize, score and report one run of a dataset; retried once if it fails (it resumes)."""
    logger = get_run_logger()
    if (block := use_storage_block()) is not None:
        logger.info("storage credentials from Prefect block %s", block)
    entry = get_dataset(dataset)
    run_id, expected_start = _this_run()
    name = dataset_run_name(dataset, run_id, expected_start)
    pinned = seed is not None or entry.run.seed is not None
    if seed is None:
        seed = entry.run.seed if entry.run.seed is not None else dataset_run_seed(run_id)
    out = out or f"{entry.output_url}/{name}"
    config = entry.synthesis_config(num_samples=num_samples, shard_size=shard_size, guidance_scale=guidance_scale, steps=steps, seed=seed,
                                    workers=workers, out=out)
    check_fits_here(config)  # before anything is written: workers, batch memory, class labels on this machine
    logger.info("dataset %s: seed %d (%s), output %s, attempt %d", dataset, seed, "pinned" if pinned else "drawn from this flow run", out,
                flow_run.get_run_count())
    progress = create_progress_artifact(0.0, key=f"{dataset}-progress", description=f"{name}: shards committed")
    with tags(*entry.deployment_tags(), f"run:{name}"):  # on every task run (and subflow) of this run
        # the bodies, not subflows: lanes, scoring, the report and their cards are on this run
        summary = run_synthesis(config, progress_artifact=progress, artifact_prefix=dataset)
        if entry.baseline:  # the standard arm beside it, same seed and sizes, then one report of both
            baseline = entry.baseline_config(config)
            summary["baseline"] = run_synthesis(baseline, artifact_prefix=f"{dataset}-standard")
            if config.output.reference:
                summary["report"] = report_runs([config.output.out, baseline.output.out], config.output.reference, config.output.out,
                                                title=f"{name}: guided vs standard", storage_options=config.output.storage_options,
                                                artifact_prefix=dataset)["report"]
    return {**summary, "dataset": dataset, "seed": seed}


@flow(name="build-reference", flow_run_name=_dataset_task_name)
def build_dataset_reference(dataset: str) -> dict:
    """The dataset's reference set, in the feature space its runs score in (the model preset's
    extractor unless the file pins one, or the offline fallback), never a fixed default."""
    entry = get_dataset(dataset)
    extractor = entry.synthesis_config(read_prompts=False).output.extractor
    with tags(*entry.deployment_tags()):
        return build_reference(entry.reference_source, entry.reference_url, extractor=extractor)


@flow(name="score", flow_run_name=_dataset_task_name)
def score_dataset_run(dataset: str, run: str) -> dict:
    entry = get_dataset(dataset)
    with tags(*entry.deployment_tags()):
        return score(entry.resolve(run, "run"), entry.reference_url)
