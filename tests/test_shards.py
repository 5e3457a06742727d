"""Storage layer: shard schema, atomic writes, integrity checks and manifest on local, memory and S3."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minority_core.io.atomic as atomic
from minority_core.io import (
    FEATURES_SCHEMA,
    SAMPLES_SCHEMA,
    CorruptShardError,
    Manifest,
    ShardRecord,
    ShardStore,
    StorageError,
    config_hash,
    decode_png,
    encode_png,
    features_table,
    retry,
    sample_id,
    samples_table,
)

FAST = {"retries": 2, "retry_delay": 0.0}


def images(n: int = 5, h: int = 8, w: int = 6, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def local_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path) -> ShardStore:
    """The same tests over a local dir, fsspec's in-memory FS and a real S3 API (moto)."""
    if request.param == "local":
        return ShardStore(str(tmp_path / "out"), **FAST)
    if request.param == "memory":
        return ShardStore(f"memory://t-{uuid.uuid4().hex}/out", **FAST)
    url, options = request.getfixturevalue("s3_bucket")
    return ShardStore(f"{url}/out", options, **FAST)


# --------------------------------------------------------------------------- ids, kinds, tables


@given(st.integers(0, 9_999_999), st.integers(0, 999_999))
def test_sample_id_is_fixed_width_and_parses_back(shard, row):
    """Five digits at least (the ids of every earlier run), more past shard 99,999: 10M shards."""
    sid = sample_id(shard, row)
    assert re.fullmatch(r"\d{5,7}-\d{6}", sid) and (len(sid) == 12) == (shard < 100_000)
    assert tuple(map(int, sid.split("-"))) == (shard, row)


def test_shard_files_past_five_digits_are_listed(tmp_path):
    store = ShardStore(str(tmp_path))
    for index in (7, 99_999, 100_000, 1_234_567):
        store.write_shard("features/x", index, features_table([sample_id(index, 0)], np.ones((1, 2))))
    assert store.list_indices("features/x") == [7, 99_999, 100_000, 1_234_567]
    assert store.shard_path("features/x", 1_234_567).endswith("features/x/shard-1234567.parquet")


@pytest.mark.parametrize("shard,row", [(-1, 0), (0, -1), (10_000_000, 0), (0, 1_000_000), (1.0, 0), (True, 0)])
def test_sample_id_refuses_out_of_range(shard, row):
    with pytest.raises(ValueError):
        sample_id(shard, row)


@pytest.mark.parametrize(
    "kind",
    ["", "..", "../x", "samples/../..", "/etc", "/samples", "a//b", "a/./b", "Samples", "a\\b", "a b", ".hidden", "samples/", "x/..", "é"],
)
def test_bad_kinds_refused(kind, tmp_path):
    store = ShardStore(str(tmp_path))
    with pytest.raises(ValueError):
        store.shard_path(kind, 0)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab./\\-_Z \x00", max_size=12), st.integers(-2, 100_001))
def test_any_accepted_kind_stays_under_root(kind, index):
    root = "/data/out"
    store = ShardStore(root)
    try:
        path = store.shard_path(kind, index)
    except ValueError:
        return
    assert path.startswith(root + "/")
    assert os.path.normpath(path) == path
    assert ".." not in path.split("/")
    assert re.fullmatch(r"shard-\d{5,7}\.parquet", path.rsplit("/", 1)[1])


def test_shard_paths_follow_layout(tmp_path):
    store = ShardStore(str(tmp_path))
    assert store.shard_path("samples", 3) == f"{tmp_path}/samples/shard-00003.parquet"
    assert store.shard_path("features/demo-classifier", 12) == f"{tmp_path}/features/demo-classifier/shard-00012.parquet"
    assert ShardStore("memory://").shard_path("samples", 0) == "/samples/shard-00000.parquet"
    with pytest.raises(ValueError):
        ShardStore("s3://")


def test_samples_table_schema_and_content():
    imgs = images(4)
    table = samples_table(imgs, shard_index=7, seed=123, labels=[0, None, 2, 3], guidance=0.5, arm="guided")
    assert table.schema.equals(SAMPLES_SCHEMA, check_metadata=True)
    hf = json.loads(table.schema.metadata[b"huggingface"])
    assert hf["info"]["features"]["image"] == {"_type": "Image"}
    assert table.column("sample_id").to_pylist() == [f"00007-{i:06d}" for i in range(4)]
    assert table.column("seed").to_pylist() == [123] * 4
    assert table.column("label").to_pylist() == [0, None, 2, 3]
    assert table.column("guidance").to_pylist() == [0.5] * 4
    assert table.column("arm").to_pylist() == ["guided"] * 4
    standard = samples_table(imgs, 0, 1, arm="standard")
    assert standard.column("label").null_count == 4
    assert standard.column("guidance").to_pylist() == [0.0] * 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"images": images().astype(np.float32)},
        {"images": images()[0]},
        {"images": images(c=2)},
        {"images": images().tolist()},
        {"labels": [1, 2]},
        {"labels": np.array([0.5] * 5)},
        {"labels": [1.0] * 5},
        {"guidance": float("nan")},
        {"guidance": float("inf")},
        {"guidance": 1e39},
        {"seed": 1.5},
        {"shard_index": -1},
        {"arm": ""},
    ],
)
def test_samples_table_refuses_bad_input(kwargs):
    args = {"images": images(), "shard_index": 0, "seed": 0, **kwargs}
    with pytest.raises(ValueError) as err:
        samples_table(**args)
    one_line(err)


@pytest.mark.parametrize("c", [1, 3])
def test_png_round_trip(c):
    img = images(1, 9, 7, c)[0]
    data = encode_png(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = decode_png(data)
    assert back.dtype == np.uint8 and back.shape == (9, 7, c)
    np.testing.assert_array_equal(back, img)


def test_features_table_round_trip_and_validation(store):
    feats = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    ids = [sample_id(2, i) for i in range(6)]
    table = features_table(ids, feats)
    assert table.schema.equals(FEATURES_SCHEMA(4))
    assert pa.types.is_fixed_size_list(table.schema.field("feature").type)
    record = store.write_shard("features/demo-classifier", 2, table)
    assert record.path == "features/demo-classifier/shard-00002.parquet"
    back = store.read_shard(record)
    assert back.schema.field("feature").type == pa.list_(pa.float32(), 4)
    np.testing.assert_array_equal(np.stack(back.column("feature").to_numpy(zero_copy_only=False)), feats)
    assert back.column("sample_id").to_pylist() == ids
    for bad in (np.array([[np.nan] * 4] * 6, np.float32), np.full((6, 4), np.inf, np.float32), np.ones((6, 4), np.int64)):
        with pytest.raises(ValueError):
            features_table(ids, bad)
    with pytest.raises(ValueError):
        features_table(ids[:5], feats)
    with pytest.raises(ValueError):
        features_table([ids[0]] * 6, feats)
    with pytest.raises(ValueError):
        FEATURES_SCHEMA(0)


# --------------------------------------------------------------------------- shards on storage


def test_shard_round_trip(store):
    imgs = images(5, c=3)
    table = samples_table(imgs, 3, seed=99, labels=np.arange(5), guidance=0.2)
    record = store.write_shard("samples", 3, table)
    assert (record.kind, record.index, record.path, record.rows) == ("samples", 3, "samples/shard-00003.parquet", 5)

    stored = store.fs.cat_file(store.shard_path("samples", 3))
    assert record.sha256 == hashlib.sha256(stored).hexdigest()
    assert record.bytes == len(stored)

    back = store.read_shard(record)
    assert back.schema.equals(SAMPLES_SCHEMA, check_metadata=True)
    ids = back.column("sample_id").to_pylist()
    assert len(set(ids)) == len(ids) == 5
    decoded = np.stack([decode_png(d["bytes"]) for d in back.column("image").to_pylist()])
    np.testing.assert_array_equal(decoded, imgs)
    assert back.column("label").to_pylist() == list(range(5))

    assert store.read_shard(("samples", 3)).equals(back)
    assert store.verify(record)
    assert store.exists("samples", 3) and not store.exists("samples", 4)
    assert store.list_indices("samples") == [3]
    store.delete("samples", 3)
    store.delete("samples", 3)  # idempotent
    assert not store.exists("samples", 3)
    assert not store.verify(record)
    with pytest.raises(FileNotFoundError, match="shard-00003"):
        store.read_shard(record)


def test_grayscale_shard_and_many_row_groups(tmp_path):
    store = ShardStore(str(tmp_path))
    imgs = images(130, 4, 4, 1)
    record = store.write_shard("samples", 0, samples_table(imgs, 0, seed=1))
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(store.shard_path("samples", 0)).metadata
    assert meta.num_row_groups == 3  # <= 64 rows per group
    back = store.read_shard(record)
    np.testing.assert_array_equal(np.stack([decode_png(d["bytes"]) for d in back.column("image").to_pylist()]), imgs)


def test_atomic_write_leaves_no_temporaries(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_shard("samples", 0, samples_table(images(2), 0, 0))
    store.write_shard("samples", 0, samples_table(images(3), 0, 0))  # overwrite in place
    store.write_manifest(Manifest(config={"a": 1}))
    assert local_files(tmp_path) == ["manifest.json", "samples/shard-00000.parquet"]
    assert store.read_shard(("samples", 0)).num_rows == 3


def test_failed_rename_leaves_nothing(tmp_path, monkeypatch):
    store = ShardStore(str(tmp_path), **FAST)
    calls = []

    def broken_replace(*args, **kwargs):
        calls.append(args)
        raise OSError("disk on fire")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)  # the rename that publishes the temporary
    with pytest.raises(StorageError) as err:
        store.write_shard("samples", 1, samples_table(images(2), 1, 0))
    assert "samples/shard-00001.parquet" in one_line(err) and "gave up after 2 attempts" in str(err.value)
    assert len(calls) == 2  # retried
    assert local_files(tmp_path) == []


def test_failure_after_partial_write_leaves_nothing(tmp_path, monkeypatch):
    store = ShardStore(str(tmp_path), **FAST)
    store.write_shard("samples", 0, samples_table(images(2), 0, 0))
    before = (tmp_path / "samples" / "shard-00000.parquet").read_bytes()

    def broken_fsync(fd):  # the temporary already holds the bytes when this fails
        raise PermissionError("fsync refused")

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    with pytest.raises(StorageError) as err:
        store.write_shard("samples", 0, samples_table(images(4), 0, 0))
    assert "shard-00000.parquet" in one_line(err)
    assert local_files(tmp_path) == ["samples/shard-00000.parquet"]
    assert (tmp_path / "samples" / "shard-00000.parquet").read_bytes() == before  # old shard intact


def test_unserialisable_table_writes_nothing(tmp_path):
    store = ShardStore(str(tmp_path))
    bad = pa.table({"x": pa.array([(1, 2, 3)], pa.month_day_nano_interval())})
    with pytest.raises(ValueError, match="cannot serialize"):
        store.write_shard("scores/x", 0, bad)
    with pytest.raises(ValueError, match="SAMPLES_SCHEMA"):
        store.write_shard("samples", 0, pa.table({"sample_id": ["a"]}))
    assert local_files(tmp_path) == []


def test_object_store_put_retries_then_fails_cleanly(monkeypatch):
    store = ShardStore(f"memory://t-{uuid.uuid4().hex}", **{**FAST, "retries": 3})
    real = store.fs.pipe_file
    failures = iter([ConnectionError("reset"), TimeoutError("slow")])

    def flaky(path, data, **kw):
        err = next(failures, None)
        if err:
            raise err
        return real(path, data, **kw)

    monkeypatch.setattr(store.fs, "pipe_file", flaky)
    record = store.write_shard("samples", 0, samples_table(images(2), 0, 0))
    assert store.verify(record)

    monkeypatch.setattr(store.fs, "pipe_file", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("refused")))
    with pytest.raises(StorageError) as err:
        store.write_shard("samples", 1, samples_table(images(2), 1, 0))
    assert store.shard_url("samples", 1) in one_line(err)
    assert not store.exists("samples", 1)


def test_corrupt_and_truncated_shards_detected(store):
    record = store.write_shard("samples", 0, samples_table(images(3), 0, 0))
    path = store.shard_path("samples", 0)
    good = store.fs.cat_file(path)

    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    store.fs.pipe_file(path, bytes(flipped))
    store.fs.invalidate_cache()
    assert not store.verify(record)
    with pytest.raises(CorruptShardError) as err:
        store.read_shard(record)
    msg = one_line(err)
    assert "shard-00000.parquet" in msg and record.sha256 in msg and hashlib.sha256(flipped).hexdigest() in msg

    store.fs.pipe_file(path, good[: len(good) // 2])
    store.fs.invalidate_cache()
    assert not store.verify(record)
    with pytest.raises(CorruptShardError):
        store.read_shard(record)
    with pytest.raises(CorruptShardError, match="not readable Parquet"):
        store.read_shard(("samples", 0))  # no record: still refused, not a raw Arrow error


# --------------------------------------------------------------------------- manifest


def test_config_hash_is_canonical():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    with pytest.raises(ValueError):
        config_hash({"a": float("nan")})
    with pytest.raises(ValueError):
        config_hash({"a": object()})


def test_manifest_round_trip(store):
    assert store.read_manifest() is None
    config = {"model": "bundled:digits", "num_samples": 10, "guidance": {"scale": 0.4}}
    manifest = Manifest(config=config, code_version="0.1.0+abc")
    assert manifest.config_hash == config_hash(config)
    rec0 = store.write_shard("samples", 0, samples_table(images(2), 0, 0))
    rec1 = store.write_shard("samples", 1, samples_table(images(2), 1, 0))
    feat = store.write_shard("features/demo", 0, features_table(["00000-000000"], np.ones((1, 3), np.float32)))
    for rec in (rec0, rec1, feat):
        manifest.add(rec)
    assert manifest.committed("samples") == {0, 1}
    assert manifest.committed("features/demo") == {0}
    assert manifest.committed("scores/demo") == set()
    store.write_manifest(manifest)

    back = store.read_manifest()
    assert back == manifest
    assert back.shards["samples/00001"] == rec1
    assert all(store.verify(r) for r in back.shards.values())

    text = store.fs.cat_file(store._abs("manifest.json")).decode()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    for secret in ("key", "secret", "storage_options", "endpoint_url"):
        assert f'"{secret}"' not in text

    manifest.discard("samples", 1)
    store.write_manifest(manifest)
    assert store.read_manifest().committed("samples") == {0}


def test_manifest_rejects_tampering():
    manifest = Manifest(config={"a": 1})
    manifest.add(ShardRecord("samples", 0, "samples/shard-00000.parquet", 2, "0" * 64, 10))
    data = json.loads(manifest.to_json())
    assert ShardRecord.from_dict(data["shards"]["samples/00000"]).to_dict() == data["shards"]["samples/00000"]
    data["config"]["a"] = 2
    with pytest.raises(ValueError, match="config_hash"):
        Manifest.from_json(json.dumps(data))
    data = json.loads(manifest.to_json())
    data["shards"]["samples/00000"]["path"] = "../evil.parquet"
    with pytest.raises(ValueError):
        Manifest.from_json(json.dumps(data))
    with pytest.raises(ValueError):
        Manifest.from_json("{not json")


def test_corrupt_manifest_file_is_a_storage_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(StorageError, match="manifest.json"):
        ShardStore(str(tmp_path)).read_manifest()


# --------------------------------------------------------------------------- preflight and retries


def test_check_writable_ok_and_leaves_nothing(store):
    store.check_writable()
    if store.local:
        assert local_files(Path(store.root)) == []
    else:
        store.fs.invalidate_cache()
        assert not store.fs.exists(store.root) or store.fs.ls(store.root) == []


def test_check_writable_missing_bucket(moto_endpoint):
    options = {"client_kwargs": {"endpoint_url": moto_endpoint}, "key": "testing", "secret": "testing"}
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/out"
    with pytest.raises(StorageError) as err:
        ShardStore(url, options, **FAST).check_writable()
    msg = one_line(err)
    assert url in msg and "bucket does not exist" in msg


def test_check_writable_connection_refused():
    options = {
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
        "key": "k",
        "secret": "s",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    with pytest.raises(StorageError) as err:
        ShardStore("s3://bucket/out", options, retries=1).check_writable()
    msg = one_line(err)
    assert "s3://bucket/out" in msg and "cannot reach" in msg


def test_check_writable_parent_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    url = str(tmp_path / "afile" / "out")
    with pytest.raises(StorageError) as err:
        ShardStore(url, **FAST).check_writable()
    msg = one_line(err)
    assert url in msg and "is a file" in msg


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_check_writable_read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(StorageError) as err:
            ShardStore(str(ro / "out"), **FAST).check_writable()
        assert "permission denied" in one_line(err)
    finally:
        ro.chmod(0o755)


def test_check_writable_permission_denied_is_one_line(tmp_path, monkeypatch):
    store = ShardStore(str(tmp_path / "out"), **FAST)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic, "open", denied, raising=False)  # shadows the builtin the writer opens its temporary with
    with pytest.raises(StorageError) as err:
        store.check_writable()
    msg = one_line(err)
    assert store.url in msg and "permission denied" in msg
    assert local_files(tmp_path) == []


def test_retry_helper():
    sleeps: list[float] = []
    attempts = iter([OSError("blip"), ConnectionError("reset")])

    def flaky():
        err = next(attempts, None)
        if err:
            raise err
        return 42

    assert retry(flaky, "op s3://b/x", attempts=3, base_delay=0.1, sleep=sleeps.append) == 42
    assert len(sleeps) == 2 and sleeps[0] <= 0.1 and sleeps[1] <= 0.2

    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("nope")

    with pytest.raises(FileNotFoundError):
        retry(missing, "op", attempts=5, sleep=sleeps.append)
    assert len(calls) == 1  # permanent errors are not retried

    with pytest.raises(StorageError, match=r"^op s3://b/x: gave up after 2 attempts"):
        retry(lambda: (_ for _ in ()).throw(TimeoutError()), "op s3://b/x", attempts=2, sleep=lambda s: None)


def test_store_pickles_without_leaking_options(s3_bucket):
    url, options = s3_bucket
    store = ShardStore(f"{url}/out", options)
    assert "secret" not in repr(store) and "testing" not in repr(store)
    clone = pickle.loads(pickle.dumps(store))
    record = clone.write_shard("samples", 0, samples_table(images(1), 0, 0))
    assert store.verify(record)


# --------------------------------------------------------------------------- Hugging Face datasets


def test_datasets_loads_shards_as_pil_images(tmp_path, monkeypatch):
    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hf_home / "datasets"))
    import datasets
    from PIL import Image

    store = ShardStore(str(tmp_path / "out"))
    rgb = images(3, 10, 12, 3)
    store.write_shard("samples", 0, samples_table(rgb, 0, 5, labels=[1, 2, 3], guidance=0.4))
    store.write_shard("samples", 1, samples_table(images(2, 10, 12, 3, seed=1), 1, 6, guidance=0.4))
    files = [store.shard_path("samples", i) for i in (0, 1)]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(hf_home / "cache"))
    assert len(ds) == 5
    assert isinstance(ds.features["image"], datasets.Image)
    first = ds[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (12, 10)
    np.testing.assert_array_equal(np.asarray(first["image"]), rgb[0])
    assert first["sample_id"] == "00000-000000" and first["label"] == 1 and first["arm"] == "guided"
    assert ds[4]["label"] is None


def test_clean_temporaries_removes_crash_leftovers(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_shard("samples", 0, samples_table(images(1), 0, 0))
    stale = tmp_path / "samples" / ".shard-00001.parquet.tmp-deadbeef"
    stale.write_bytes(b"half a shard")
    assert store.list_indices("samples") == [0]  # temporaries are never mistaken for shards
    assert store.clean_temporaries("samples") == 1
    assert local_files(tmp_path) == ["samples/shard-00000.parquet"]
    assert store.clean_temporaries("features/none") == 0


def test_samples_shards_from_before_the_prompt_column_read_as_todays_schema(tmp_path):
    import pyarrow.parquet as pq

    table = samples_table(np.zeros((2, 4, 4, 1), np.uint8), 0, 7)
    old = table.drop_columns(["prompt"])
    (tmp_path / "samples").mkdir()
    pq.write_table(old, tmp_path / "samples" / "shard-00000.parquet")
    back = ShardStore(str(tmp_path)).read_shard(("samples", 0))
    assert back.schema.equals(SAMPLES_SCHEMA, check_metadata=True)
    assert back.column("prompt").null_count == 2 and back.column("sample_id").to_pylist() == old.column("sample_id").to_pylist()
    assert pa.concat_tables([back, table]).num_rows == 4  # concatenates with new shards
