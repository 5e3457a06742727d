"""Serve every dataset's deployments from one process (a single machine, no work pool needed).

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py

For each `deployments/datasets/<name>.yaml`: `synthesize/<name>` (with the dataset's cron
schedule), `build-reference/<name>` and `score/<name>`, tagged with dataset and model.
`--interval SECONDS` replaces the cron schedules (for trying schedules out, and for tests).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minority_synth.env import apply_defaults

apply_defaults()

from prefect import serve  # noqa: E402

import flows.dataset_runs as dataset_runs  # noqa: E402
from deployments.specs import dataset_specs  # noqa: E402
from minority_core.config.datasets import list_datasets  # noqa: E402


def deployments(names: list[str], interval: float | None = None) -> list:
    return [getattr(dataset_runs, spec.flow).to_deployment(name=spec.name, parameters=spec.parameters, tags=spec.tags, description=spec.description,
                                                          **spec.schedule)
            for name in names for spec in dataset_specs(name, interval)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", help="serve only these datasets (default: all)")
    parser.add_argument("--interval", type=float, default=None, help="schedule synthesize every N seconds instead of the cron")
    args = parser.parse_args()
    names = args.dataset or list_datasets()
    serve(*deployments(names, args.interval), limit=4)


if __name__ == "__main__":
    main()
