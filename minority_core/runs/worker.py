"""A shard worker: loads the model once, then generates, labels, featurises and writes shards.

Plain Python, so it runs as a Ray actor (the pipeline wraps it with `ray.remote`), in-process,
or in a test. Images never leave the worker: it writes its shards to storage itself and returns
only the small shard records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from minority_core.config.sampler import SamplerConfig
from minority_core.demo.labeling import label_samples
from minority_core.io import ShardRecord, ShardStore, features_table, sample_id, samples_table
from minority_core.io.images import to_uint8_nhwc
from minority_core.models import load_model
from minority_core.runs.generate import check_class_labels, generate, sample_prompts


@dataclass(frozen=True)
class ShardResult:
    index: int
    samples: ShardRecord
    features: ShardRecord | None
    seconds: float
    pid: int


class ShardWorker:
    def __init__(
        self,
        model_spec: str,
        sampler_config: dict,
        store_url: str,
        storage_options: dict | None = None,
        device: str = "cpu",
        extractor: str | None = None,
        model_options: dict | None = None,
        arm: str = "guided",
    ) -> None:
        # A Ray actor whose constructor raises dies with ActorDiedError (a multi-line report without
        # the cause); kept here, the error reaches the driver from `ping` as itself, in one line.
        self._arguments = (model_spec, sampler_config, store_url, storage_options, device, extractor, model_options, arm)
        self.init_error: Exception | None = None
        try:
            self._start(*self._arguments)
        except Exception as exc:
            self.init_error = exc

    def _start(self, model_spec, sampler_config, store_url, storage_options, device, extractor, model_options, arm) -> None:
        from minority_core.config.guidance import MinorityGuidance

        guidance = sampler_config.get("guidance")
        self.config = SamplerConfig(**{**sampler_config, "guidance": MinorityGuidance(**guidance) if guidance else None})
        self.device = device
        self.loaded = load_model(model_spec, device, **(model_options or {}))
        check_class_labels(self.loaded, self.config)  # fails the pool's start-up, not shard 0
        self.store = ShardStore(store_url, storage_options)
        self.extractor = None
        if extractor:
            from minority_core.metrics.features import get_extractor

            self.extractor = get_extractor(extractor, device=device)
        self.arm = arm

    def generate_shard(self, index: int, rows: int, seed: int, first_index: int) -> ShardResult:
        """Generate shard `index` (`rows` samples from `seed`; `first_index` = the run-wide index of
        its first sample, which picks prompts), write samples (+ features), return records."""
        import os

        if self.init_error is not None:  # e.g. an actor Ray restarted while storage or a GPU was briefly unavailable
            self._start(*self._arguments)  # one more try; a lasting error is raised as itself
            self.init_error = None
        start = time.monotonic()
        images, class_labels = generate(self.loaded, rows, self.config, seed, self.device, first_index=first_index)
        labels = class_labels.numpy() if class_labels is not None else label_samples(self.loaded.spec, images)
        scale = 0.0 if self.config.guidance is None else self.config.guidance.scale
        prompts = sample_prompts(self.config, first_index, rows)
        table = samples_table(to_uint8_nhwc(images), index, seed, labels=labels, guidance=scale, arm=self.arm, prompts=prompts)
        features_record = None
        if self.extractor is not None:
            with torch.no_grad():
                feats = self.extractor(images)
            ids = [sample_id(index, row) for row in range(rows)]
            features_record = self.store.write_shard(f"features/{self.extractor.name}", index, features_table(ids, feats))
        samples_record = self.store.write_shard("samples", index, table)
        return ShardResult(index, samples_record, features_record, time.monotonic() - start, os.getpid())

    def ping(self) -> int:
        """The worker's pid once it is ready; its start-up error otherwise."""
        import os

        if self.init_error is not None:
            raise self.init_error
        return os.getpid()
