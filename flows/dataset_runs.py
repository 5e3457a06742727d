"""Flows that deployments run: a dataset name plus overrides → a full synthesis (+ score + report).

These are what `deployments/serve.py` and `deployments/prefect.yaml` expose as
`synthesize/<dataset>`, `build-reference/<dataset>` and `score/<dataset>`.
"""

from __future__ import annotations

import datetime as dt

from prefect import flow
from prefect.runtime import flow_run

from flows.scoring import build_reference, score
from flows.synthesize import synthesize
from minority_core.config.datasets import get_dataset


def _dataset_run_name() -> str:
    return f"{flow_run.parameters.get('dataset', 'dataset')}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"


@flow(name="synthesize", flow_run_name=_dataset_run_name, retries=1, retry_delay_seconds=30)
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
    config = get_dataset(dataset).synthesis_config(num_samples=num_samples, shard_size=shard_size, guidance_scale=guidance_scale, steps=steps, seed=seed, workers=workers, out=out)
    return synthesize(config)


@flow(name="build-reference", flow_run_name=_dataset_run_name)
def build_dataset_reference(dataset: str) -> dict:
    entry = get_dataset(dataset)
    return build_reference(entry.reference_source, entry.reference_url, extractor=entry.reference.extractor or "inception-pool3")


@flow(name="score", flow_run_name=_dataset_run_name)
def score_dataset_run(dataset: str, run: str) -> dict:
    entry = get_dataset(dataset)
    return score(entry.resolve(run), entry.reference_url)
