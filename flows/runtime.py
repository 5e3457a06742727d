"""Where flow code runs: inside a Prefect flow run, or as a plain call from a one-shot command.

The flows' bodies are plain functions (`score_run`, `report_runs`, ...) and each flow wraps one.
Inside a flow run (a deployment, `synthesize`, the demo) their tasks are task runs and their
artifacts land on that run; called from `minority-synth score|report` with no Prefect server
configured, the same code runs without Prefect's API, so no temporary server starts (~15-20 s)
and nothing is recorded that nobody would look at.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL

LOG = logging.getLogger("minority_synth")


def in_flow_run() -> bool:
    return FlowRunContext.get() is not None


def prefect_configured() -> bool:
    """Whether a Prefect server is configured (PREFECT_API_URL): then one-shot commands record flow runs."""
    return bool(PREFECT_API_URL.value())


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (its lines show in the UI), else this package's logger."""
    return get_run_logger() if in_flow_run() else LOG


def run_task(task: Any, *args: Any, **kwargs: Any) -> Any:
    """A Prefect task as a task run of the current flow run, or as the plain function outside one."""
    return task(*args, **kwargs) if in_flow_run() else task.fn(*args, **kwargs)


def artifact(create: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A Prefect artifact on the current flow run; nothing outside one (there is no run to show it on)."""
    return create(*args, **kwargs) if in_flow_run() else None
