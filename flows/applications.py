"""The paper's application on the bundled digits: augmentation with minority samples (augment-eval)."""

from __future__ import annotations

import json

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.synthesize import synthesize
from minority_core.config import SynthesisConfig
from minority_core.errors import InputError
from minority_core.io import ShardStore, decode_png
from minority_core.io.atomic import write_atomic
from minority_core.runs.scoring import open_run

DATASETS = {"digits": "bundled:digits"}


def read_images_and_labels(run: str) -> tuple[np.ndarray, np.ndarray]:
    """All samples of a run as uint8 NHWC with their (pseudo-)labels, in shard order."""
    store, manifest = open_run(run, {})
    tables = [store.read_shard(r) for r in sorted(manifest.records("samples"), key=lambda r: r.index)]
    images = np.stack([decode_png(cell["bytes"]) for t in tables for cell in t.column("image").to_pylist()])
    labels = np.array([label for t in tables for label in t.column("label").to_pylist()])
    if np.any(labels == None):  # noqa: E711 - pyarrow nulls
        raise InputError(f"{run} has unlabelled samples; augment-eval needs the demo classifier's labels")
    return images, labels.astype(np.int64)


@flow(name="augment-eval")
def augment_eval_flow(out: str, dataset: str = "digits", num_samples: int = 512, seeds: tuple[int, ...] = (0, 1, 2), epochs: int = 30, workers: int = 2, steps: int | None = None, shard_size: int = 128) -> dict:
    """Generate N standard and N minority-guided samples (same seeds), then train/evaluate the
    downstream classifier on real, real + standard and real + guided data over `seeds`."""
    from minority_core.demo.augment import augment_eval, markdown_table

    if dataset not in DATASETS:
        raise InputError(f"augment-eval supports {', '.join(DATASETS)} (it needs a labeller and a held-out split), got {dataset!r}")
    out = out.rstrip("/")
    extra = {}
    for arm, scale, name in (("standard", 0.0, "standard samples"), ("guided", None, "minority-guided samples")):
        run = f"{out}/{arm}"
        synthesize(SynthesisConfig.from_options(model=DATASETS[dataset], num_samples=num_samples, shard_size=shard_size, out=run, arm=arm, guidance_scale=scale, steps=steps, workers=workers, extractor="demo-classifier"))
        extra[name] = read_images_and_labels(run)
    rows = augment_eval(extra, seeds=tuple(seeds), epochs=epochs)
    table = markdown_table(rows)
    note = ("Labels of generated samples are the bundled digit classifier's predictions (pseudo-labels). "
            f"Evaluation: the balanced held-out test split; mean ± sd over seeds {list(seeds)}, {epochs} epochs each.")
    store = ShardStore(out)
    write_atomic(store.fs, f"{store.root}/augment/results.json", json.dumps({"rows": rows, "note": note}, indent=2).encode())
    write_atomic(store.fs, f"{store.root}/augment/results.md", f"# augment-eval ({dataset})\n\n{note}\n\n{table}\n".encode())
    create_markdown_artifact(f"# augment-eval ({dataset})\n\n{note}\n\n{table}", key="augment-eval", description="downstream classifier with minority samples")
    get_run_logger().info("augment-eval:\n%s", table)
    return {"rows": rows, "table": table, "results": store.url_of("augment/results.md")}
