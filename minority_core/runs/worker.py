"""A shard worker: loads the model once, then generates, labels, featurises and writes shards.

Plain Python, so it runs as a Ray actor (tasks/ray_pool.py wraps it with `ray.remote`),
in-process, or in a test. Images never leave the worker: it writes its shards to storage itself
and returns only the small shard records. `sample_shard` is the one sample → label → table path,
shared with the CLI's `sample`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch

from minority_core.config import SamplerConfig, SynthesisConfig
from minority_core.demo.labeling import label_samples
from minority_core.io import ShardRecord, ShardStore, features_table, sample_id, samples_table
from minority_core.io.images import to_uint8_nhwc
from minority_core.models import LoadedModel, load_model
from minority_core.runs.generate import check_class_labels, generate, generation_threads, sample_prompts
from minority_core.runs.plan import ShardSpec


@dataclass(frozen=True)
class ShardResult:
    index: int
    samples: ShardRecord
    features: ShardRecord | None
    seconds: float
    pid: int


def sample_shard(loaded: LoadedModel, sampler: SamplerConfig, spec: ShardSpec, arm: str, device: str = "cpu") -> tuple[torch.Tensor, pa.Table]:
    """One shard's images (float NCHW in [−1, 1]) and its samples table: class labels (given, or
    predicted where the product has a labeller), the guidance scale, the arm, the prompts."""
    images, class_labels = generate(loaded, spec.rows, sampler, spec.seed, device, first_index=spec.first_index)
    with generation_threads():  # the labeller's argmax too, as in an actor
        labels = class_labels.numpy() if class_labels is not None else label_samples(loaded.spec, images)
    scale = 0.0 if sampler.guidance is None else sampler.guidance.scale
    prompts = sample_prompts(sampler, spec.first_index, spec.rows)
    table = samples_table(to_uint8_nhwc(images), spec.index, spec.seed, labels=labels, guidance=scale, arm=arm, prompts=prompts)
    return images, table


class ShardWorker:
    """Generates shards of one run. `config` is a SynthesisConfig's dict form (what crosses to a
    Ray actor); `storage_options` carries credentials, which the config never holds; `device`
    overrides the config's (the pool puts one actor on each GPU)."""

    def __init__(self, config: dict[str, Any], storage_options: dict | None = None, device: str | None = None) -> None:
        # A Ray actor whose constructor raises dies with ActorDiedError (a multi-line report without
        # the cause); kept here, the error reaches the driver from `ping` as itself, in one line.
        self._arguments = (config, storage_options, device)
        self.init_error: Exception | None = None
        try:
            self._start(*self._arguments)
        except Exception as exc:
            self.init_error = exc

    def _start(self, config: dict[str, Any], storage_options: dict | None, device: str | None) -> None:
        self.config = SynthesisConfig.model_validate(config)
        self.device = device or self.config.execution.device
        self.loaded = load_model(self.config.model.spec, self.device, **self.config.model.load_options())
        check_class_labels(self.loaded, self.config.sampler)  # fails the pool's start-up, not shard 0
        self.store = ShardStore(self.config.output.out, storage_options)
        self.extractor = None
        if self.config.output.extractor:
            from minority_core.metrics.features import get_extractor

            self.extractor = get_extractor(self.config.output.extractor, device=self.device)

    def generate_shard(self, index: int, rows: int, seed: int, first_index: int) -> ShardResult:
        """Generate shard `index` (`rows` samples from `seed`; `first_index` = the run-wide index of
        its first sample, which picks prompts), write samples (+ features), return records."""
        if self.init_error is not None:  # e.g. an actor Ray restarted while storage or a GPU was briefly unavailable
            self._start(*self._arguments)  # one more try; a lasting error is raised as itself
            self.init_error = None
        start = time.monotonic()
        images, table = sample_shard(self.loaded, self.config.sampler, ShardSpec(index, rows, seed, first_index), self.config.output.arm, self.device)
        features_record = None
        if self.extractor is not None:
            with torch.no_grad(), generation_threads():  # features too: the same bytes in-process and on an actor
                feats = self.extractor(images)
            ids = [sample_id(index, row) for row in range(rows)]
            features_record = self.store.write_shard(f"features/{self.extractor.name}", index, features_table(ids, feats))
        samples_record = self.store.write_shard("samples", index, table)
        return ShardResult(index, samples_record, features_record, time.monotonic() - start, os.getpid())

    def ping(self) -> int:
        """The worker's pid once it is ready; its start-up error otherwise."""
        if self.init_error is not None:
            raise self.init_error
        return os.getpid()
