"""Process settings the product needs, applied once before prefect, ray or faiss are imported.

One place for them: the CLI, `deployments/serve.py`, the benchmarks and the test session all
call `apply_defaults()`. Values already in the environment win (an operator can override any).
"""

from __future__ import annotations

import os

DEFAULTS = {
    # OpenMP threads (FAISS, torch) spin-wait otherwise, which makes 2-core machines 2-4x slower.
    "OMP_WAIT_POLICY": "PASSIVE",
    # No telemetry from the Prefect API: the machines this runs on may have no internet at all.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The ephemeral Prefect API needs more than the default 20 s to start on a busy 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # The library's own log lines (a dataset's extractor fallback, scoring progress) reach the
    # flow run's log in the UI, not only the process's stderr.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "minority_core,minority_synth",
    # ... and outside a flow run (one-shot commands) they go to stderr only, without a warning each.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def apply_defaults() -> None:
    """Set each default that the environment does not already set."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
