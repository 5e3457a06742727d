"""Everything a report shows for one arm (a run), assembled from its stored shards."""

from __future__ import annotations

import numpy as np

from minority_core.demo.digits import RARE_CLASSES
from minority_core.errors import InputError
from minority_core.io import SCORE_COLUMNS, decode_png, features_matrix
from minority_core.runs.scoring import open_run, read_kind
from minority_core.runs.select import prompts_of

RARE_CLASSES_BY_MODEL = {"bundled:digits": RARE_CLASSES}
CONFIDENT = 0.9  # a prediction is confident when its max softmax exceeds this


def arm_result(run: str, reference_features: np.ndarray, storage_options: dict, name: str | None = None, seconds: float | None = None):
    """Scores, labels, images and set metrics (P/R, D/C, FID; rare-class share where the model has a
    labeller) of one run against the reference features."""
    from minority_core.metrics import density_coverage, fid_from_features, precision_recall
    from minority_core.report import ArmResult

    store, manifest = open_run(run, storage_options)
    extractor = manifest.config["extractor"]
    scores = read_kind(store, manifest.records(f"scores/{extractor}"))
    samples = read_kind(store, manifest.records("samples"))
    features = features_matrix(read_kind(store, manifest.records(f"features/{extractor}")))
    if scores.num_rows != samples.num_rows:
        raise InputError(f"{run}: {scores.num_rows} scores for {samples.num_rows} samples; run `minority-synth score` first")
    images = np.stack([decode_png(cell["bytes"]) for cell in samples.column("image").to_pylist()])
    summary: dict = {"samples": samples.num_rows}
    # Each needs more than k rows on both sides; a run too small for one gets "—" in the report, not a crash.
    rows = min(len(reference_features), len(features))
    summary.update(precision_recall(reference_features, features, k=3) if rows > 3 else {"precision": None, "recall": None})
    summary.update(density_coverage(reference_features, features, k=5) if rows > 5 else {"density": None, "coverage": None})
    if len(features) > 1:
        summary["fid"] = fid_from_features(reference_features, features)
    model = manifest.config["model"]
    if model in RARE_CLASSES_BY_MODEL:
        from minority_core.metrics.features import DemoClassifierFeatures

        labels, confidence = DemoClassifierFeatures().predict(images)
        summary["rare_share"] = float(np.isin(labels, RARE_CLASSES_BY_MODEL[model]).mean())
        summary["confident_share"] = float((confidence > CONFIDENT).mean())
    if seconds is not None:
        summary["seconds_per_sample"] = seconds / samples.num_rows
    columns = {c: scores.column(c).to_numpy(zero_copy_only=False) for c in SCORE_COLUMNS}
    columns["in_support"] = scores.column("in_support").to_numpy(zero_copy_only=False)
    if scores.column("sample_id").to_pylist() != samples.column("sample_id").to_pylist():
        raise InputError(f"{run}: scores and samples are not in the same order; rerun `minority-synth score`")
    return ArmResult(name or manifest.config.get("arm", run), columns, summary, images, scores.column("sample_id").to_pylist(),
                     prompts=prompts_of(samples))
