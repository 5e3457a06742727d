"""Prefect tasks of a synthesis run: thin wrappers over minority_core.runs and the actor pool."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import update_progress_artifact
from prefect.cache_policies import NO_CACHE

from minority_core.config import SynthesisConfig
from minority_core.errors import NonFiniteSampleError
from minority_core.io import ShardStore
from minority_core.runs.commit import ManifestCommitter
from minority_core.runs.plan import Plan, ShardSpec, plan_run, shard_specs
from minority_core.runs.worker import ShardResult
from tasks.ray_pool import call


def open_store(config: SynthesisConfig) -> ShardStore:
    return ShardStore(config.output.out, config.full_storage_options())


def features_kind(config: SynthesisConfig) -> str:
    return f"features/{config.output.extractor}"


@task(name="plan-shards", cache_policy=NO_CACHE, persist_result=False)
def plan_shards(config: SynthesisConfig) -> Plan:
    """Split the run into shards and find what is already committed (see `minority_core.runs.plan`)."""
    o = config.output
    return plan_run(open_store(config), config.output_identity(), shard_specs(o.num_samples, o.shard_size, o.seed),
                    features_kind(config), overwrite=o.overwrite, logger=get_run_logger())


def progress_reporter(artifact_id):
    """`on_commit` for the committer: the run's progress artifact follows the commits."""
    return lambda done, total: update_progress_artifact(artifact_id, 100.0 * done / total)


def worth_retrying(task, task_run, state) -> bool:
    """Retry a shard after a crash or a storage outage, not after a failure its seed will repeat."""
    try:
        state.result()
    except (NonFiniteSampleError, ValueError):  # same seed, same config: the same error again
        return False
    except BaseException:
        return True
    return True


@task(name="generate-shard", task_run_name="shard-{spec.index:05d}", retries=2, retry_delay_seconds=2, retry_condition_fn=worth_retrying, cache_policy=NO_CACHE, persist_result=False)
def generate_shard(pool, spec: ShardSpec, committer: ManifestCommitter) -> ShardResult:
    """Generate one shard on an idle actor (which writes it), then commit it to the manifest."""
    with pool.borrow() as actor:
        result = call(actor, "generate_shard", spec.index, spec.rows, spec.seed, spec.first_index)
    done = committer.commit(result)
    get_run_logger().info("shard %05d: %d rows in %.1f s (%d/%d committed)", spec.index, spec.rows, result.seconds, done, committer.total)
    return result
