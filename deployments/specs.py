"""What a dataset deploys as: `synthesize/<name>` (on the dataset's schedule), `build-reference/<name>`
and `score/<name>`, tagged with the dataset and model. One list, used by `minority-synth deploy`
(a work pool) and `deployments/serve.py` (one process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.client.schemas.schedules import CronSchedule
from pydantic import ValidationError

import flows
from minority_core.config.datasets import DatasetEntry, get_dataset

# Where the flows' code lies: the checkout, or site-packages for a wheel. A process worker runs
# each flow run there, so neither MINORITY_SYNTH_HOME nor a checkout is needed.
CODE_ROOT = Path(flows.__file__).resolve().parent.parent


@dataclass(frozen=True)
class DeploymentSpec:
    name: str  # the dataset
    flow: str  # attribute of flows.dataset_runs
    parameters: dict[str, Any]
    tags: list[str]
    description: str | None = None
    schedule: dict[str, Any] = field(default_factory=dict)  # {"cron": ...} or {"interval": ...}

    @property
    def entrypoint(self) -> str:
        return f"flows/dataset_runs.py:{self.flow}"


def dataset_specs(name: str, interval: float | None = None) -> list[DeploymentSpec]:
    """The three deployments of dataset `name`; `interval` (seconds) replaces its cron."""
    entry = get_dataset(name, extra_checks=(schedule_problems,))
    tags = entry.deployment_tags()
    schedule = {"interval": interval} if interval else ({"cron": entry.schedule.cron} if entry.schedule.cron else {})
    params = {"dataset": name}
    return [
        DeploymentSpec(name, "synthesize_dataset", params, tags, entry.description, schedule),
        DeploymentSpec(name, "build_dataset_reference", params, tags),
        DeploymentSpec(name, "score_dataset_run", params, tags),
    ]


def schedule_problems(entry: DatasetEntry) -> list[str]:
    """The cron and timezone as Prefect's own CronSchedule parses them (what serving the dataset builds)."""
    if entry.schedule.cron is None:
        return []
    try:
        CronSchedule(cron=entry.schedule.cron, timezone=entry.schedule.timezone)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = f"schedule.{error['loc'][0]}" if error["loc"] else "schedule"
        fix = "use an IANA name such as UTC or Europe/Berlin" if field == "schedule.timezone" else "five fields in range, e.g. '0 3 * * *' (daily 03:00)"
        return [f"{field}: {error['msg'].removeprefix('Value error, ')}: {fix}"]
    return []
