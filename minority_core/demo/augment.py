"""The paper's application: do minority samples help a downstream classifier on imbalanced data?

Train the same small classifier on (a) the imbalanced real training split, (b) plus N standard
samples, (c) plus N minority-guided samples — generated samples labelled by the bundled digit
classifier (pseudo-labels) — over several seeds, and evaluate each on the balanced held-out split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minority_core.demo.digits import RARE_CLASSES, split_digits
from minority_core.errors import InputError


@dataclass(frozen=True)
class TrainingSet:
    name: str
    images: np.ndarray  # float32 [N, 1, 8, 8] in [-1, 1]
    labels: np.ndarray  # int64 [N]


def uint8_to_float(images_uint8_nhwc: np.ndarray) -> np.ndarray:
    return (np.asarray(images_uint8_nhwc, dtype=np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0).astype(np.float32)


def train_and_evaluate(train: TrainingSet, seed: int, epochs: int = 30, split_seed: int = 0) -> dict:
    """Fit a fresh DigitClassifier on `train`, evaluate on the balanced test split."""
    from minority_core.demo.classifier import fit_digit_classifier

    split = split_digits(split_seed)
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.labels.astype(np.int64))
    model = fit_digit_classifier(x, y, epochs, seed)
    with torch.no_grad():
        pred = model(torch.from_numpy(split.test_images)).argmax(1).numpy()
    truth = split.test_labels
    recalls = {int(c): float((pred[truth == c] == c).mean()) for c in range(10)}
    return {
        "accuracy": float((pred == truth).mean()),
        "balanced_accuracy": float(np.mean(list(recalls.values()))),
        **{f"recall_{c}": recalls[c] for c in RARE_CLASSES},
    }


def augmentation_sets(extra: dict[str, tuple[np.ndarray, np.ndarray]], split_seed: int = 0) -> list[TrainingSet]:
    """The imbalanced real split alone, then real + each named set of (uint8 NHWC images, labels)."""
    split = split_digits(split_seed)
    sets = [TrainingSet("real (imbalanced)", split.train_images, split.train_labels)]
    for name, (images, labels) in extra.items():
        if len(images) != len(labels):
            raise InputError(f"{name}: {len(images)} images but {len(labels)} labels")
        sets.append(TrainingSet(f"real + {len(images)} {name}", np.concatenate([split.train_images, uint8_to_float(images)]), np.concatenate([split.train_labels, labels.astype(np.int64)])))
    return sets


def augment_eval(extra: dict[str, tuple[np.ndarray, np.ndarray]], seeds: tuple[int, ...] = (0, 1, 2), epochs: int = 30) -> list[dict]:
    """Mean and standard deviation over seeds of each metric, one row per training set."""
    if not seeds:
        raise InputError("give at least one seed")
    rows = []
    for training_set in augmentation_sets(extra):
        runs = [train_and_evaluate(training_set, seed, epochs) for seed in seeds]
        row = {"training set": training_set.name, "images": int(len(training_set.labels)), "rare in train": float(np.isin(training_set.labels, RARE_CLASSES).mean())}
        for metric in runs[0]:
            values = np.array([r[metric] for r in runs])
            row[metric] = float(values.mean())
            row[f"{metric} sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    metrics = ["accuracy", "balanced_accuracy", *[f"recall_{c}" for c in RARE_CLASSES]]
    head = "| training set | images | rare in train | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (3 + len(metrics))]
    for r in rows:
        cells = [f"{r[m]:.3f} ± {r[m + ' sd']:.3f}" for m in metrics]
        lines.append(f"| {r['training set']} | {r['images']} | {r['rare in train']:.1%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
