"""What a dataset deploys as: `synthesize/<name>` (on the dataset's schedule), `build-reference/<name>`
and `score/<name>`, tagged with the dataset and model. One list, used by `minority-synth deploy`
(a work pool) and `deployments/serve.py` (one process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flows
from minority_core.config.datasets import get_dataset

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
    entry = get_dataset(name)
    tags = entry.deployment_tags()
    schedule = {"interval": interval} if interval else ({"cron": entry.schedule.cron} if entry.schedule.cron else {})
    params = {"dataset": name}
    return [
        DeploymentSpec(name, "synthesize_dataset", params, tags, entry.description, schedule),
        DeploymentSpec(name, "build_dataset_reference", params, tags),
        DeploymentSpec(name, "score_dataset_run", params, tags),
    ]
