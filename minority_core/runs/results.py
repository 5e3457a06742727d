"""Everything a report shows for one arm (a run), read shard by shard so that memory does not grow
with the run's images.

What each part of the report needs, and so all that is read:
- histograms and tables: the scores shards (sample id and four numbers per sample);
- precision/recall, density/coverage, FID: the generated features (N × d float32), never images;
- rare-class and confident shares (models with a labeller): the classifier over each samples
  shard's images, fed in the same batches as over the whole run at once (same numbers), each
  shard's images dropped once classified;
- the grids: only the images of the rows they show (`report.shown_rows`), chosen from the
  scores first, decoded from the samples shards that hold them;
- per-prompt rows (text-to-image runs): the prompt column, shard by shard.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

import numpy as np

from minority_core.demo.digits import RARE_CLASSES
from minority_core.errors import InputError
from minority_core.io import SCORE_COLUMNS, ShardRecord, ShardStore, decode_png, features_matrix
from minority_core.runs.scoring import check_scores_cover_samples, open_run, score_table
from minority_core.runs.select import prompts_of

RARE_CLASSES_BY_MODEL = {"bundled:digits": RARE_CLASSES}
CONFIDENT = 0.9  # a prediction is confident when its max softmax exceeds this


def arm_result(run: str, reference_features: np.ndarray, storage_options: dict, name: str | None = None, seconds: float | None = None):
    """Scores, labels, the shown images and set metrics (P/R, D/C, FID; rare-class share where the
    model has a labeller) of one run against the reference features."""
    from minority_core.metrics import fid_from_features, prdc, precision_recall
    from minority_core.report import ArmResult, shown_rows

    store, manifest = open_run(run, storage_options)
    if not manifest.records("samples"):  # else empty scores meet an empty run and fail later, naming nothing
        raise InputError(f"{run} has no committed samples (an empty or unfinished run): run `minority-synth synthesize` for it, then `minority-synth score`")
    extractor = manifest.config["extractor"]
    scores = score_table(store, manifest)
    samples = check_scores_cover_samples(run, store, manifest, scores)
    features = read_features(store, manifest.records(f"features/{extractor}"))
    summary: dict = {"samples": scores.num_rows}
    # Each needs more than k rows on both sides; a run too small for one gets "—" in the report, not a crash.
    rows = min(len(reference_features), len(features))
    if rows > 5:  # one index and one self-kNN per set for all four
        summary.update(prdc(reference_features, features, k_pr=3, k_dc=5))
    else:
        summary.update(precision_recall(reference_features, features, k=3) if rows > 3 else {"precision": None, "recall": None})
        summary.update({"density": None, "coverage": None})
    if len(features) > 1:
        summary["fid"] = fid_from_features(reference_features, features)
    del features
    columns = {c: scores.column(c).to_numpy(zero_copy_only=False) for c in SCORE_COLUMNS}
    columns["in_support"] = scores.column("in_support").to_numpy(zero_copy_only=False)
    model = manifest.config["model"]
    classifier = None
    if model in RARE_CLASSES_BY_MODEL:
        from minority_core.metrics.features import DemoClassifierFeatures

        classifier = DemoClassifierFeatures()
    wanted = shown_rows(columns["avgknn"])
    read = read_samples(store, samples, wanted, classifier, with_prompts=bool((manifest.config.get("sampler") or {}).get("prompts")))
    if classifier is not None:
        summary["rare_share"] = float(np.isin(read.labels, RARE_CLASSES_BY_MODEL[model]).mean())
        summary["confident_share"] = float((read.confidence > CONFIDENT).mean())
    if seconds is not None:
        summary["seconds_per_sample"] = seconds / scores.num_rows
    images = np.stack([read.tiles[row] for row in wanted]) if wanted else np.zeros((0, 0, 0), np.uint8)
    return ArmResult(name or manifest.config.get("arm", run), columns, summary, images, scores.column("sample_id").to_pylist(),
                     prompts=read.prompts, image_rows=wanted, config=manifest.config, labels=read.labels)


def read_features(store: ShardStore, records: list[ShardRecord]) -> np.ndarray:
    """The run's features in shard order, float32 [N, d], read one shard at a time into one array
    (never a second copy of them all)."""
    features = None
    start = 0
    for record in records:
        block = features_matrix(store.read_shard(record))
        if features is None:
            features = np.empty((sum(r.rows for r in records), block.shape[1]), np.float32)
        features[start : start + len(block)] = block
        start += len(block)
    return features if features is not None else np.zeros((0, 1), np.float32)


@dataclass
class SamplesRead:
    """What one pass over the samples shards brings back: the shown tiles by score row, the
    classifier's labels and confidences (with a labeller), each sample's prompt (text-to-image)."""

    tiles: dict[int, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    confidence: np.ndarray | None = None
    prompts: list[str] | None = None


def read_samples(store: ShardStore, records: list[ShardRecord], wanted: list[int], classifier=None, with_prompts: bool = False) -> SamplesRead:
    """One pass over the samples shards (in shard order, row = position in the run): decode the
    `wanted` rows' images; with a `classifier`, classify every image; with `with_prompts`, collect
    the prompts (None unless every sample has one). Without either, only the shards holding a
    wanted row are read."""
    read = SamplesRead(prompts=[] if with_prompts else None)
    batches = ClassifierBatches(classifier) if classifier is not None else None
    every_shard = batches is not None or with_prompts
    start = 0
    for record in records:
        here = wanted[bisect_left(wanted, start):bisect_left(wanted, start + record.rows)]
        if every_shard or here:
            table = store.read_shard(record)
            if batches is not None:
                images = [decode_png(cell["bytes"]) for cell in table.column("image").to_pylist()]
                batches.add(np.stack(images))
                read.tiles.update((row, images[row - start]) for row in here)
            else:
                cells = table.column("image").take([row - start for row in here]).to_pylist()
                read.tiles.update((row, decode_png(cell["bytes"])) for row, cell in zip(here, cells, strict=True))
            if read.prompts is not None:
                prompts = prompts_of(table)
                if prompts is None:
                    read.prompts = None
                else:
                    read.prompts.extend(prompts)
        start += record.rows
    if batches is not None:
        read.labels, read.confidence = batches.finish()
    return read


class ClassifierBatches:
    """Feeds a classifier exactly the batches it would cut from the whole run's images at once
    (its `batch_size`, from the first image), while holding at most one batch plus one shard:
    the labels and confidences come out bit for bit as from one call over every image."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier
        self.pending: list[np.ndarray] = []
        self.count = 0
        self.labels: list[np.ndarray] = []
        self.confidence: list[np.ndarray] = []

    def add(self, images: np.ndarray) -> None:
        self.pending.append(images)
        self.count += len(images)
        while self.count >= self.classifier.batch_size:
            self._predict(self.classifier.batch_size)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count:
            self._predict(self.count)
        if not self.labels:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(self.labels), np.concatenate(self.confidence)

    def _predict(self, n: int) -> None:
        held = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        labels, confidence = self.classifier.predict(held[:n])
        self.labels.append(labels)
        self.confidence.append(confidence)
        rest = held[n:]
        self.pending, self.count = ([rest] if len(rest) else []), len(rest)
