"""Storage credentials kept in a Prefect block (prefect-aws AwsCredentials), used by a real run
against a real S3-compatible server (moto_server on loopback): the keys reach the writing
process from the block, never from its environment or the flow's parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("minority-synth"))


@pytest.fixture()
def block(prefect_api, moto_endpoint):
    """An AwsCredentials block on the session's Prefect API, pointing at moto; its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect_aws import AwsCredentials

    AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                   aws_client_parameters={"endpoint_url": moto_endpoint}).save("minority-test", overwrite=True)
    return {"name": "aws-credentials/minority-test", "api": PREFECT_API_URL.value()}


def no_credentials_env(**extra: str) -> dict:
    """The environment without any AWS credential or storage option (as on a fresh worker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINORITY_STORAGE"))}
    return {**env, "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", **extra}


def synthesize(out: str, env: dict) -> subprocess.CompletedProcess:
    args = [CLI, "synthesize", "--model", "bundled:digits", "--num-samples", "8", "--shard-size", "8", "--steps", "3", "--workers", "0", "--out", out]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def test_a_run_writes_to_s3_with_the_keys_of_a_prefect_block(block, s3_bucket):
    bucket, options = s3_bucket
    out = f"{bucket}/with-block"
    done = synthesize(out, no_credentials_env(PREFECT_API_URL=block["api"], MINORITY_STORAGE_BLOCK=block["name"]))
    assert done.returncode == 0, done.stderr[-3000:]
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    manifest = json.loads(fs.cat_file(f"{out.removeprefix('s3://')}/manifest.json"))
    assert sum(r["rows"] for key, r in manifest["shards"].items() if key.startswith("samples/")) == 8
    assert "testing" not in json.dumps(manifest)  # the keys are nowhere in what the run recorded

    without = synthesize(f"{bucket}/without-block", no_credentials_env(PREFECT_API_URL=block["api"]))
    assert without.returncode != 0  # the same command without the block has no credentials
    assert not fs.exists(f"{bucket.removeprefix('s3://')}/without-block/manifest.json")


def test_a_missing_or_wrong_block_is_one_line(block, tmp_path):
    for name, message in (("aws-credentials/nope", "no Prefect block 'aws-credentials/nope'"),):
        done = synthesize(str(tmp_path / "run"), no_credentials_env(PREFECT_API_URL=block["api"], MINORITY_STORAGE_BLOCK=name))
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
        assert done.returncode == 2 and len(errors) == 1 and message in errors[0], done.stderr[-2000:]
        assert not (tmp_path / "run").exists()
