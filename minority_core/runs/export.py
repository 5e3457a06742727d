"""Exporting selections as a trainable dataset: the selected samples' images with their labels or
prompts and their provenance (run, run seed, shard seed, model, arm, guidance, scores, and the
classifier confidence where `filter` computed one), in one of two layouts a trainer reads:

- `parquet`: `OUT/data/shard-00000.parquet`, ... (the image column as Hugging Face `Image`
  structs, so it decodes to PIL) and `OUT/README.md`, a dataset card whose `configs:` entry
  makes `datasets.load_dataset(OUT)` find the files;
- `imagefolder`: `OUT/train/<label>/<run tag>-<sample id>.png` and `OUT/train/metadata.jsonl`
  (the other columns; NaN Rarity, i.e. out of support, is written as null), plus the card.

Sample ids restart in every run, so every row carries its run (`select.run_name`): an export of
several runs, or a join of several exports, never merges two samples. Images are copied one
samples shard at a time, so memory does not grow with the run.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import yaml

from minority_core.errors import InputError
from minority_core.io import SCORE_COLUMNS, Manifest, ShardRecord, ShardStore, write_atomic
from minority_core.io.schema import IMAGE_TYPE
from minority_core.runs.scoring import check_scores_cover_samples, score_table
from minority_core.runs.select import run_name

FORMATS = ("parquet", "imagefolder")

_HF_FEATURES = {
    "image": {"_type": "Image"},
    **{c: {"dtype": t, "_type": "Value"} for c, t in (
        ("label", "int32"), ("prompt", "string"), ("run", "string"), ("sample_id", "string"), ("run_seed", "int64"), ("seed", "int64"),
        ("model", "string"), ("arm", "string"), ("guidance", "float32"), ("avgknn", "float64"), ("lof", "float64"), ("rarity", "float64"),
        ("in_support", "bool"), ("confidence", "float32"))},
}

EXPORT_SCHEMA = pa.schema(
    [
        pa.field("image", IMAGE_TYPE),
        pa.field("label", pa.int32()),
        pa.field("prompt", pa.string()),
        pa.field("run", pa.string()),
        pa.field("sample_id", pa.string()),
        pa.field("run_seed", pa.int64()),
        pa.field("seed", pa.int64()),
        pa.field("model", pa.string()),
        pa.field("arm", pa.string()),
        pa.field("guidance", pa.float32()),
        *(pa.field(c, pa.float64()) for c in SCORE_COLUMNS),
        pa.field("in_support", pa.bool_()),
        pa.field("confidence", pa.float32()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": _HF_FEATURES}})},
)


@dataclass(frozen=True)
class RunPart:
    """What one run contributes: its selected score rows (positions in the run) and their provenance."""

    store: ShardStore
    manifest: Manifest
    run: str
    scores: pa.Table  # the run's scores (a few numbers per sample), in run order
    samples: list[ShardRecord]
    rows: np.ndarray
    confidence: np.ndarray | None  # per selected row, where the selection carries one
    selection: str

    def card_row(self) -> dict:
        c = self.manifest.config
        guidance = ((c.get("sampler") or {}).get("guidance") or {}).get("scale", 0.0)
        return {"run": self.run, "model": c.get("model"), "arm": c.get("arm"), "seed": c.get("seed"), "guidance": guidance,
                "extractor": c.get("extractor"), "selection": self.selection, "rows": int(len(self.rows))}


def export_runs(runs: list[tuple[ShardStore, Manifest]], out: ShardStore, selection: str | None = None, fmt: str = "parquet") -> dict:
    """Copy each run's selection (every scored sample when `selection` is None) into one dataset at
    `out`, which must be empty; returns the counts and where the dataset is."""
    if fmt not in FORMATS:
        raise InputError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not runs:
        raise InputError("give at least one run to export")
    check_empty(out)
    parts = [run_part(store, manifest, selection) for store, manifest in runs]
    names = [p.run for p in parts]
    if len(set(names)) != len(names):
        raise InputError("the same run is given twice: give each run once")
    from minority_core.io.lease import Lease

    with Lease.acquire(out, "export"):  # (checks it is writable) two exports into one folder: the second is refused
        writer = ParquetWriter(out) if fmt == "parquet" else ImageFolderWriter(out)
        try:
            for part in parts:
                for table in export_tables(part):
                    writer.add(table)
            writer.finish()
            out.write_text("README.md", dataset_card(parts, fmt, writer.rows))
        except BaseException:
            remove_export(out)  # the folder was empty: a half export would only be refused next time
            raise
    return {"out": out.fs.unstrip_protocol(out.root), "format": fmt, "rows": writer.rows,
            "runs": [{"run": p.run, "rows": int(len(p.rows))} for p in parts]}


def check_empty(out: ShardStore) -> None:
    """An export never mixes with earlier files: a second export into one folder would double count."""
    if out.fs.exists(out.root) and out.fs.ls(out.root):
        raise InputError(f"{out.url} is not empty: export to a new folder")


def remove_export(out: ShardStore) -> None:
    """Delete what an export writes (and nothing else) after a failure."""
    for entry in ("data", "train", "README.md"):
        path = f"{out.root}/{entry}"
        if out.fs.exists(path):
            out.fs.rm(path, recursive=True)


def run_part(store: ShardStore, manifest: Manifest, selection: str | None) -> RunPart:
    """The score rows of a run's selection (positions in the run), checked against this run."""
    scores = score_table(store, manifest)
    if scores.num_rows == 0:
        raise InputError(f"{store.url} has no scores yet: run `minority-synth score` first")
    samples = check_scores_cover_samples(store.url, store, manifest, scores)
    run = run_name(store, manifest)
    if selection is None:
        return RunPart(store, manifest, run, scores, samples, np.arange(scores.num_rows), None, "every scored sample")
    table = read_selection(store, selection)
    if "run" in table.column_names and set(table.column("run").to_pylist()) - {run}:
        raise InputError(f"selection {selection!r} of {store.url} was made on an earlier run at this location: rerun `minority-synth filter`")
    rows = positions(store.url, table.column("sample_id").to_pylist(), samples)
    if len(rows) == 0:
        raise InputError(f"selection {selection!r} of {store.url} is empty: nothing to export")
    confidence = table.column("confidence").to_numpy(zero_copy_only=False) if "confidence" in table.column_names else None
    order = np.argsort(rows, kind="stable")
    return RunPart(store, manifest, run, scores, samples, rows[order], None if confidence is None else confidence[order], selection)


def read_selection(store: ShardStore, name: str) -> pa.Table:
    """A selection written by `filter`; a clear error if there is none by that name."""
    if not store.exists(f"selections/{name}", 0):
        raise InputError(f"{store.url} has no selection {name!r}: run `minority-synth filter --run {store.url} --name {name}` first")
    return store.read_shard((f"selections/{name}", 0), verify=False)


def positions(url: str, ids: list[str], samples: list[ShardRecord]) -> np.ndarray:
    """Each sample id's position in the run (ids are `<shard>-<row>`; shards in index order)."""
    starts = dict(zip((r.index for r in samples), np.cumsum([0] + [r.rows for r in samples[:-1]]), strict=True))
    rows = {r.index: r.rows for r in samples}
    found = []
    for sid in ids:
        shard, _, row = sid.partition("-")
        if not (shard.isdigit() and row.isdigit() and int(shard) in starts and int(row) < rows[int(shard)]):
            raise InputError(f"{url}: selected sample {sid!r} is not in the run: rerun `minority-synth filter`")
        found.append(starts[int(shard)] + int(row))
    if len(set(found)) != len(found):
        raise InputError(f"{url}: the selection lists a sample twice: rerun `minority-synth filter`")
    return np.asarray(found, dtype=np.int64)


def export_tables(part: RunPart) -> Iterator[pa.Table]:
    """The export rows of one run, one table per samples shard that holds selected rows."""
    bounds = np.cumsum([0] + [r.rows for r in part.samples])
    cuts = np.searchsorted(part.rows, bounds)
    for k, record in enumerate(part.samples):
        here = slice(cuts[k], cuts[k + 1])
        if here.start == here.stop:
            continue
        rows = part.rows[here]
        shard = part.store.read_shard(record).take(pa.array(rows - bounds[k], pa.int64()))
        confidence = None if part.confidence is None else part.confidence[here]
        yield export_table(part, shard, part.scores.take(pa.array(rows, pa.int64())), confidence)


def export_table(part: RunPart, shard: pa.Table, scores: pa.Table, confidence: np.ndarray | None) -> pa.Table:
    """Samples rows joined with their scores and provenance, in EXPORT_SCHEMA."""
    if shard.column("sample_id").to_pylist() != scores.column("sample_id").to_pylist():
        raise InputError(f"{part.store.url}: scores and samples are not in the same order; rerun `minority-synth score`")
    n = shard.num_rows
    config = part.manifest.config
    columns = {
        **{c: shard.column(c) for c in ("image", "label", "prompt")},
        "run": pa.array([part.run] * n, pa.string()),
        "sample_id": shard.column("sample_id"),
        "run_seed": pa.array([config.get("seed")] * n, pa.int64()),
        "seed": shard.column("seed"),
        "model": pa.array([config.get("model")] * n, pa.string()),
        **{c: shard.column(c) for c in ("arm", "guidance")},
        **{c: scores.column(c) for c in (*SCORE_COLUMNS, "in_support")},
        "confidence": pa.nulls(n, pa.float32()) if confidence is None else pa.array(confidence, pa.float32()),
    }
    return pa.table(columns).cast(EXPORT_SCHEMA)


class ParquetWriter:
    """`data/shard-NNNNN.parquet`, one per samples shard exported, atomically written."""

    def __init__(self, out: ShardStore) -> None:
        self.out, self.rows, self.files = out, 0, 0

    def add(self, table: pa.Table) -> None:
        self.out.write_shard("data", self.files, table)
        self.files += 1
        self.rows += table.num_rows

    def finish(self) -> None:
        """Nothing to close: every shard was complete when written."""

    @staticmethod
    def configs() -> list[dict]:
        return [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}]


class ImageFolderWriter:
    """`train/<label>/<run tag>-<sample id>.png` and, at the end, `train/metadata.jsonl`, whose rows
    are spooled to a local temporary file meanwhile (memory stays flat however many rows)."""

    def __init__(self, out: ShardStore) -> None:
        self.out, self.rows, self.present = out, 0, {"file_name"}
        self.spool = tempfile.TemporaryFile("w+", encoding="utf-8")

    def add(self, table: pa.Table) -> None:
        for row in table.to_pylist():
            image = row.pop("image")
            folder = "unlabelled" if row["label"] is None else str(row["label"])
            name = f"{folder}/{hashlib.sha256(row['run'].encode()).hexdigest()[:8]}-{row['sample_id']}.png"
            write_atomic(self.out.fs, f"{self.out.root}/train/{name}", image["bytes"])
            entry = {"file_name": name, **{k: jsonable(v) for k, v in row.items()}}
            self.present.update(k for k, v in entry.items() if v is not None)
            self.spool.write(json.dumps(entry) + "\n")
        self.rows += table.num_rows

    def finish(self) -> None:
        """Columns that are null in every row (no prompts, no confidence) are left out of the metadata."""
        self.spool.seek(0)

        def write(sink) -> None:
            for line in self.spool:
                sink.write((json.dumps({k: v for k, v in json.loads(line).items() if k in self.present}) + "\n").encode("utf-8"))

        try:
            write_atomic(self.out.fs, f"{self.out.root}/train/metadata.jsonl", write)
        finally:
            self.spool.close()

    @staticmethod
    def configs() -> list[dict]:
        return [{"config_name": "default", "data_files": [{"split": "train", "path": "train/**"}]}]


def jsonable(value):
    """JSON has no NaN: a NaN score (Rarity out of support) is null."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def dataset_card(parts: list[RunPart], fmt: str, rows: int) -> str:
    """A Hugging Face dataset card: `configs:` for `load_dataset(OUT)`, then what is in it and whence."""
    writer = ParquetWriter if fmt == "parquet" else ImageFolderWriter
    header = yaml.safe_dump({"configs": writer.configs(), "tags": ["synthetic", "minority-synth"], "pretty_name": "minority-synth export"},
                            sort_keys=False)
    table = ["| run | model | arm | run seed | guidance w | extractor | selection | rows |", "|---|---|---|---|---|---|---|---|"]
    table += ["| {run} | {model} | {arm} | {seed} | {guidance} | {extractor} | {selection} | {rows} |".format(**p.card_row()) for p in parts]
    body = [
        "# minority-synth export", "",
        f"{rows} synthetic samples from {len(parts)} run(s), exported by minority-synth ({fmt}).", "",
        *table, "",
        "Columns: `image`; `label` (given or drawn class, or the bundled classifier's prediction; null if none) and `prompt` "
        "(text-to-image runs); provenance: `run` (the run's URL @ its identity hash: with `sample_id`, unique across runs), "
        "`run_seed`, `seed` (the shard seed), `model`, `arm`, `guidance`; scores against the run's reference set: `avgknn`, `lof`, "
        "`rarity` (NaN/null = out of support), `in_support`; `confidence` (classifier max softmax, where `filter` computed it).",
    ]
    return f"---\n{header}---\n\n" + "\n".join(body) + "\n"
