"""`minority-synth deploy`: every dataset's deployments on a Prefect work pool, the pool created if needed.

A process worker (`prefect worker start --pool minority-process`) then runs them: each
deployment's pull step is the code's own folder (a checkout, or site-packages for a wheel), and
the datasets folder travels in the job's environment, so the worker needs no settings of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from deployments.specs import CODE_ROOT, DeploymentSpec, dataset_specs
from minority_core.errors import InputError
from minority_synth.env import DEFAULTS

DEFAULT_POOL = "minority-process"


def ensure_pool(name: str, pool_type: str = "process") -> bool:
    """Create work pool `name` unless it exists; True if it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(name)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
            except ObjectAlreadyExists:  # created meanwhile by someone else
                return False
            return True
    if existing.type != pool_type:
        raise InputError(f"work pool {name!r} exists with type {existing.type!r}, not {pool_type!r}: pass --pool with another name")
    return False


def register(spec: DeploymentSpec, pool: str, env: dict[str, str]) -> str:
    """Register one deployment on `pool`, its runs getting `env`; returns its `flow/name`."""
    import flows.dataset_runs as dataset_runs

    flow = getattr(dataset_runs, spec.flow).from_source(source=str(CODE_ROOT), entrypoint=spec.entrypoint)
    flow.deploy(name=spec.name, work_pool_name=pool, build=False, push=False, parameters=spec.parameters, tags=spec.tags,
                description=spec.description, job_variables={"env": env}, print_next_steps=False, **spec.schedule)
    return f"{flow.name}/{spec.name}"


def deploy_all(names: list[str], pool: str = DEFAULT_POOL, datasets_dir: Path | None = None, failure_block: str | None = None,
               storage_block: str | None = None) -> dict:
    """Create the pool if needed and register every named dataset's deployments on it;
    `failure_block` (a notification block, `<type slug>/<name>`) is told of runs that fail;
    `storage_block` (prefect-aws credentials) gives the runs their storage keys."""
    from flows.dataset_runs import FAILURE_BLOCK_ENV
    from minority_core.config.datasets import DATASETS_DIR

    datasets_dir = Path(datasets_dir or os.environ.get("MINORITY_DATASETS_DIR") or DATASETS_DIR).resolve()
    specs = [spec for name in names for spec in dataset_specs(name)]  # every file validated before anything is registered
    env = {**DEFAULTS, "MINORITY_DATASETS_DIR": str(datasets_dir)}  # a worker's flow runs get the product's settings too
    if failure_block:
        check_block(failure_block)
        env[FAILURE_BLOCK_ENV] = failure_block
    if storage_block:
        from tasks.storage_blocks import STORAGE_BLOCK_ENV, options_from_block

        options_from_block(storage_block)  # it exists and holds AWS credentials
        env[STORAGE_BLOCK_ENV] = storage_block  # the name travels, never the keys
    created = ensure_pool(pool)
    return {"pool": pool, "pool_created": created, "deployments": [register(spec, pool, env) for spec in specs]}


def check_block(name: str) -> None:
    """The notification block exists and can notify, or one line with the fix."""
    from prefect.blocks.core import Block

    try:
        block = Block.load(name)
    except (ValueError, KeyError) as exc:
        raise InputError(f"no Prefect block {name!r} ({exc}): create it in the UI (Blocks) or with Python, named <type slug>/<name>") from None
    if not callable(getattr(block, "notify", None)):
        raise InputError(f"block {name!r} is a {type(block).__name__}, which cannot notify: name a notification block (slack-webhook/..., custom-webhook/...)")
