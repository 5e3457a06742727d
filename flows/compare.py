"""Baselines side by side: every method with the same seeds, sample counts, reference and extractor.

`minority-synth compare --dataset digits` trains the minority-classifier baseline's level
classifier once (`train_minority_classifier`), runs standard, self-guided, Boost-and-Skip and
minority-classifier guidance, scores them against one reference set and writes one report.
"""

from __future__ import annotations

import fsspec
import numpy as np
import torch
from prefect import flow, get_run_logger

from flows.scoring import ensure_reference, report
from flows.synthesize import synthesize
from minority_core.config import SynthesisConfig
from minority_core.errors import InputError

DATASETS = {"digits": ("bundled:digits", "bundled:digits", "demo-classifier")}  # model, reference source, extractor
METHODS = ("standard", "self-guided", "boost-and-skip", "minority-classifier")


@flow(name="train-minority-classifier")
def train_minority_classifier(out: str, model: str = "bundled:digits", levels: int = 10, steps: int = 3000, seed: int = 0) -> dict:
    """Minority scores of the real training data → quantile levels → a noise-conditional level
    classifier (Um, Lee & Ye, ICLR 2024), saved weights-only under `out`."""
    from minority_core.baselines import minority_scores, quantile_levels, save_level_classifier, train_level_classifier
    from minority_core.baselines.minority_classifier import level_accuracy
    from minority_core.demo.digits import split_digits
    from minority_core.models import load_model

    if model != "bundled:digits":
        raise InputError("train_minority_classifier needs the model's real training data; only bundled:digits ships it")
    loaded = load_model(model)
    images = torch.from_numpy(split_digits(seed).train_images)
    scores = minority_scores(loaded.model, loaded.schedule, images, generator=torch.Generator().manual_seed(seed))
    labels = quantile_levels(scores, levels)
    classifier = train_level_classifier(loaded.schedule, images, labels, steps=steps, seed=seed, num_levels=levels)
    accuracy = level_accuracy(classifier, loaded.schedule, images, labels, t=100, seed=seed + 1)
    save_level_classifier(classifier, out, metadata={"model": model, "levels": levels, "steps": steps, "seed": seed, "train_accuracy": accuracy})
    get_run_logger().info("level classifier: %d levels, accuracy %.3f on noisy training data (chance %.3f)", levels, accuracy, 1 / levels)
    return {"classifier": out, "levels": levels, "accuracy": float(accuracy), "score_mean": float(np.mean(scores))}


@flow(name="compare")
def compare(out: str, dataset: str = "digits", num_samples: int = 512, shard_size: int = 128, workers: int = 2, seed: int = 0, steps: int | None = None, classifier_steps: int = 3000) -> dict:
    """Every method with the same seeds → scores → one report (table + a plot per metric)."""
    if dataset not in DATASETS:
        raise InputError(f"compare supports {', '.join(DATASETS)} (it needs the real training data for the classifier baseline), got {dataset!r}")
    model, source, extractor = DATASETS[dataset]
    out = out.rstrip("/")
    reference = f"{out}/reference"
    ensure_reference(reference, extractor, source, None)
    classifier = f"{out}/level-classifier"
    fs, path = fsspec.core.url_to_fs(f"{classifier}/level_classifier.safetensors")
    if not fs.exists(path):
        train_minority_classifier(classifier, model=model, steps=classifier_steps, seed=seed)
    runs, seconds = [], []
    for method in METHODS:
        config = SynthesisConfig.from_options(
            model=model, num_samples=num_samples, shard_size=shard_size, out=f"{out}/{method}", arm=method, method=method,
            classifier=classifier if method == "minority-classifier" else None, steps=steps, seed=seed, workers=workers,
            extractor=extractor, reference=reference,
        )
        summary = synthesize(config)
        runs.append(config.output.out)
        seconds.append(None if summary["seconds_per_sample"] is None else summary["seconds_per_sample"] * num_samples)
    result = report(runs, reference, out, title=f"minority-synth compare: {dataset}", seconds=None if None in seconds else seconds)
    return {"report": result["report"], "table": result["table"]}
