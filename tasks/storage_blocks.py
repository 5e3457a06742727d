"""Storage credentials from Prefect blocks: prefect-aws `AwsCredentials`, or an `S3Bucket` holding one.

A team keeps its S3 keys in a block (the UI's Blocks page, encrypted at rest) instead of in every
worker's environment. `$MINORITY_STORAGE_BLOCK` (or `--storage-block`) names it as
`<type slug>/<name>` (`aws-credentials/prod`, `s3-bucket/datasets`); its keys become this
process's credential options (in memory, as a `--storage-options-file`'s), so they never travel as
flow parameters nor reach the environment of the processes it starts.
"""

from __future__ import annotations

import os

from minority_core.config.storage import keep_secret_options
from minority_core.errors import InputError

STORAGE_BLOCK_ENV = "MINORITY_STORAGE_BLOCK"


def options_from_block(name: str) -> dict:
    """s3fs options (key, secret, token, profile, region, endpoint) of the AWS credentials in block `name`."""
    from prefect.blocks.core import Block
    from prefect_aws import AwsCredentials

    try:
        block = Block.load(name)
    except (ValueError, KeyError) as exc:
        raise InputError(f"no Prefect block {name!r} ({str(exc).splitlines()[0]}): create an AwsCredentials or S3Bucket block "
                         "(prefect-aws) on the configured server, named <type slug>/<name>") from None
    creds = getattr(block, "credentials", block)
    if not isinstance(creds, AwsCredentials):
        raise InputError(f"block {name!r} is a {type(block).__name__}: name an aws-credentials/... or s3-bucket/... block")
    secret = creds.aws_secret_access_key
    options = {"key": creds.aws_access_key_id, "secret": secret.get_secret_value() if secret else None,
               "token": creds.aws_session_token, "profile": creds.profile_name}
    client_kwargs = {"region_name": creds.region_name, "endpoint_url": creds.aws_client_parameters.endpoint_url}
    options = {k: v for k, v in options.items() if v}
    if any(client_kwargs.values()):
        options["client_kwargs"] = {k: v for k, v in client_kwargs.items() if v}
    return options


def use_storage_block(name: str | None = None) -> str | None:
    """Load block `name` (default: $MINORITY_STORAGE_BLOCK) into this process's credential
    options (kept in memory; the actors get them as arguments); returns the name used, None when there is none."""
    name = name or os.environ.get(STORAGE_BLOCK_ENV)
    if name:
        keep_secret_options(options_from_block(name))
        os.environ[STORAGE_BLOCK_ENV] = name
    return name
