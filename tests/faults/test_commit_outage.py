"""The storage-outage cells of the fault matrix for score and build-reference (synthesize's are in
test_storage_faults.py): the S3 endpoint (moto behind tests/faults/s3proxy.py) stops answering
right after the first commit-like write; the command fails in one line; the same command rerun
once storage is back completes, with an exact count and the bytes of a clean run.
"""

from __future__ import annotations

import hashlib

import pytest

from minority_core.io import ShardStore, StorageError

from .helpers import CELL_SAMPLES, make_config, run_flow
from .s3proxy import FaultProxy

pytestmark = pytest.mark.usefixtures("prefect_api")

NO_CLIENT_RETRIES = {"config_kwargs": {"retries": {"total_max_attempts": 1}}}


def digits() -> int:
    from minority_core.io.sources import load_reference_images

    return len(load_reference_images("bundled:digits", {}))


def through(proxy: FaultProxy) -> dict:
    return {"client_kwargs": {"endpoint_url": proxy.url}, **NO_CLIENT_RETRIES}


def objects(fs, root: str) -> dict[str, str]:
    fs.invalidate_cache()
    return {p[len(root) + 1 :]: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in sorted(fs.find(root))}


def score_records(url: str, options: dict) -> dict[str, str]:
    """sha256 of each committed scores shard (checked against the stored bytes); CELL_SAMPLES samples scored once each."""
    store = ShardStore(url, options)
    manifest = store.read_manifest()
    records = [r for k, r in manifest.shards.items() if k.startswith("scores/")]
    ids = [i for r in records for i in store.read_shard(r).column("sample_id").to_pylist()]
    assert len(ids) == len(set(ids)) == CELL_SAMPLES
    return {r.key: r.sha256 for r in records}


def test_score_storage_outage_during_commit_then_rerun(tiny_diffusers_model, s3_bucket, moto_endpoint, tmp_path):
    from flows.scoring import make_reference, score_run

    bucket, direct = s3_bucket
    url, pristine = f"{bucket}/run", f"{bucket}/pristine"
    plain = {"client_kwargs": {"endpoint_url": moto_endpoint}}
    run_flow(make_config(tiny_diffusers_model, url, storage_options=plain, num_samples=CELL_SAMPLES))
    ref = str(tmp_path / "ref")
    make_reference("bundled:digits", ref, extractor="pixels", index="exact")
    fs = ShardStore(url, direct).fs
    fs.copy(url, pristine, recursive=True)
    score_run(url, ref, storage_options=plain, workers=0)  # the clean scoring of this URL
    clean = score_records(url, direct)
    fs.rm(url, recursive=True)
    fs.copy(pristine, url, recursive=True)

    with FaultProxy(moto_endpoint, share=0.0, kinds=("503",)) as proxy:
        proxy.fail_all_after = r"/run/commits/\d{12}-[0-9a-f]{8}\.json$"  # storage goes once the first scores shard is committed
        with pytest.raises(StorageError) as info:
            score_run(url, ref, storage_options=through(proxy), workers=0)
    assert "\n" not in str(info.value) and url in str(info.value)
    partial = ShardStore(url, direct).read_manifest()
    assert 1 <= sum(k.startswith("scores/") for k in partial.shards) < CELL_SAMPLES // 8  # the first commit landed, not all

    score_run(url, ref, storage_options=plain, workers=0)  # storage is back: the same command
    assert score_records(url, direct) == clean  # every sample scored once, byte-identical to the clean scoring


def test_build_reference_storage_outage_during_save_then_rerun(s3_bucket, moto_endpoint, tmp_path):
    from flows.scoring import make_reference
    from minority_core.metrics import ReferenceSet

    bucket, direct = s3_bucket
    plain = {"client_kwargs": {"endpoint_url": moto_endpoint}}
    local = tmp_path / "clean"
    make_reference("bundled:digits", str(local), extractor="pixels", index="exact")
    clean = {str(p.relative_to(local / "pixels")): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((local / "pixels").rglob("*")) if p.is_file()}

    with FaultProxy(moto_endpoint, share=0.0, kinds=("503",)) as proxy:
        proxy.fail_all_after = r"/ref/pixels/index/features\.npy$"  # storage goes after the set's first file
        with pytest.raises(StorageError) as info:
            make_reference("bundled:digits", f"{bucket}/ref", extractor="pixels", index="exact", storage_options=through(proxy))
    assert "\n" not in str(info.value)
    fs = ShardStore(f"{bucket}/ref", direct).fs
    assert not fs.exists(f"{bucket}/ref/pixels/index/meta.json")  # the half-saved set is not loadable

    make_reference("bundled:digits", f"{bucket}/ref", extractor="pixels", index="exact", storage_options=plain)
    assert objects(fs, f"{bucket.removeprefix('s3://')}/ref/pixels") == clean  # byte for byte the clean set, nothing else left
    assert ReferenceSet.load(f"{bucket}/ref/pixels/index", plain).index.n == digits()
