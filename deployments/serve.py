"""Serve every dataset's deployments from one process (a single machine, no work pool needed).

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py

For each `deployments/datasets/<name>.yaml`: `synthesize/<name>` (with the dataset's cron
schedule), `build-reference/<name>` and `score/<name>`, tagged with dataset and model.
`--interval SECONDS` replaces the cron schedules (for trying schedules out, and for tests). A
dataset file that does not validate is skipped with one logged line; the others are served.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minority_synth.env import apply_defaults

apply_defaults()

from prefect import serve  # noqa: E402

import flows.dataset_runs as dataset_runs  # noqa: E402
from deployments.specs import dataset_specs  # noqa: E402
from minority_core.config.datasets import list_datasets  # noqa: E402
from minority_core.errors import UserError  # noqa: E402

LOG = logging.getLogger("deployments.serve")


def deployments(names: list[str], interval: float | None = None) -> list:
    """The deployments of every dataset that validates; a bad file is one logged line and is
    skipped, so it never stops the others from being served."""
    specs = []
    for name in names:
        try:
            specs.extend(dataset_specs(name, interval))
        except UserError as exc:
            LOG.error("not serving dataset %s: %s", name, str(exc).strip().splitlines()[0])
    return [getattr(dataset_runs, spec.flow).to_deployment(name=spec.name, parameters=spec.parameters, tags=spec.tags, description=spec.description,
                                                          **spec.schedule)
            for spec in specs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", help="serve only these datasets (default: all)")
    parser.add_argument("--interval", type=float, default=None, help="schedule synthesize every N seconds instead of the cron")
    args = parser.parse_args()
    logging.basicConfig(format="%(levelname)s %(message)s")
    names = args.dataset or list_datasets()
    served = deployments(names, args.interval)
    if not served:
        print(f"Error: none of the datasets {', '.join(names) or '(none)'} can be served (see above): fix them (`minority-synth datasets validate`)", file=sys.stderr)
        sys.exit(2)
    serve(*served, limit=4)


if __name__ == "__main__":
    main()
