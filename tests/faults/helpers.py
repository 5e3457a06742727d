"""Shared helpers of the fault-injection tests: configs, runs, and the output checks every test makes."""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from minority_core.config import SynthesisConfig
from minority_core.io import ShardStore

FEATURES = "features/pixels"
# Fast shards (about 0.3 s each in-process) for tests where the timing of the fault does not matter.
FAST = dict(num_samples=24, shard_size=8, steps=6, every=2, guidance_scale=0.4)
# Samples of the writer and outage cells (test_writers.py, test_commit_outage.py): 24 in the
# suite; benchmarks/soak.py --matrix runs the same cells larger through this variable.
CELL_SAMPLES = int(os.environ.get("MINORITY_FAULT_CELL_SAMPLES", "24"))
# Slow enough (about 1-2 s per shard on one core) to kill a process in the middle of a shard.
SLOW = dict(num_samples=24, shard_size=8, steps=60, every=2, guidance_scale=0.4)


def slow_cli_args(model_folder: str, out: str | Path) -> list[str]:
    """The SLOW run as `minority-synth synthesize` arguments (one Ray actor), for the tests that run the real CLI."""
    return [
        "synthesize", "--model", f"diffusers:{model_folder}", "--num-samples", str(SLOW["num_samples"]),
        "--shard-size", str(SLOW["shard_size"]), "--steps", str(SLOW["steps"]), "--every", str(SLOW["every"]),
        "--guidance-scale", str(SLOW["guidance_scale"]), "--extractor", "pixels", "--workers", "1", "--out", str(out),
    ]  # fmt: skip


def make_config(model_folder: str, out: str, **kw) -> SynthesisConfig:
    base = dict(model=f"diffusers:{model_folder}", extractor="pixels", workers=0, **FAST)
    return SynthesisConfig.from_options(**{**base, "out": out, **kw})


def run_flow(cfg: SynthesisConfig) -> dict:
    from flows.synthesize import synthesize

    return synthesize(cfg)


def raw_manifest(store: ShardStore) -> dict:
    """The manifest JSON as stored, refusing duplicate keys (a shard recorded twice)."""

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), f"duplicate keys in manifest: {keys}"
        return dict(pairs)

    return json.loads(store.fs.cat_file(store._abs("manifest.json")), object_pairs_hook=no_duplicates)


def hashes(store: ShardStore) -> dict[str, str]:
    return {key: record.sha256 for key, record in store.read_manifest().shards.items()}


def temporaries(root: str | Path) -> list[str]:
    """Hidden temporaries or write probes left under a local output root."""
    found = []
    for folder, _, files in os.walk(root):
        found += [os.path.join(folder, f) for f in files if ".tmp-" in f or f.startswith(".write-probe-")]
    return found


def check_output(store: ShardStore, num_samples: int, shard_size: int = 8, expected: dict[str, str] | None = None) -> dict:
    """A complete, consistent run: every shard committed once, verifying, rows exact, ids unique."""
    raw = raw_manifest(store)
    manifest = store.read_manifest()
    total = -(-num_samples // shard_size)
    samples, features = manifest.records("samples"), manifest.records(FEATURES)
    assert [r.index for r in samples] == list(range(total)) == [r.index for r in features]
    assert len(raw["shards"]) == 2 * total
    assert sum(r.rows for r in samples) == num_samples == sum(r.rows for r in features)
    ids, feature_ids = [], []
    for record in samples:
        ids += store.read_shard(record).column("sample_id").to_pylist()  # verifies size, sha256, rows
    for record in features:
        feature_ids += store.read_shard(record).column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == num_samples and ids == feature_ids
    assert store.list_indices("samples") == list(range(total)) == store.list_indices(FEATURES)
    store.fs.invalidate_cache()
    on_storage = sorted(p[len(store.root) + 1 :] for p in store.fs.find(store.root))
    assert on_storage == sorted(["manifest.json", *(r.path for r in manifest.shards.values())])  # no temporaries, probes or strays
    if expected is not None:
        assert {k: r.sha256 for k, r in manifest.shards.items()} == expected
    return {"hashes": {k: r.sha256 for k, r in manifest.shards.items()}, "ids": ids}


_REFERENCE_CACHE: dict[str, dict[str, str]] = {}


def in_process_reference(cfg: SynthesisConfig, tmp_dir: str | Path) -> dict[str, str]:
    """Shard hashes of a clean in-process generation of `cfg` (what `workers=0` must reproduce)."""
    from flows.synthesize import make_pool
    from minority_core.io import config_hash
    from minority_core.runs.plan import shard_specs

    key = config_hash(cfg.output_identity())
    if key not in _REFERENCE_CACHE:
        pool = make_pool(cfg.replace(out=str(tmp_dir), workers=0, storage_options={}))
        expected = {}
        o = cfg.output
        for spec in shard_specs(o.num_samples, o.shard_size, o.seed):
            result = pool.worker.generate_shard(spec.index, spec.rows, spec.seed, spec.first_index)
            expected[result.samples.key] = result.samples.sha256
            expected[result.features.key] = result.features.sha256
        _REFERENCE_CACHE[key] = expected
    return _REFERENCE_CACHE[key]


@contextmanager
def task_run_messages():
    """Collect what Prefect task runs log (our warnings, Prefect's retry notices) during the block."""

    class Capture(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    capture = Capture()
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(capture)
    try:
        yield capture.messages
    finally:
        logger.removeHandler(capture)
