"""Storage options: plain ones travel as flow parameters, credentials never do.

Prefect stores flow parameters in plain text, so anything that looks like a credential is
refused there and reaches the processes that need it through the environment instead.
"""

from __future__ import annotations

import json
import os

from minority_core.errors import InputError

STORAGE_OPTIONS_ENV = "MINORITY_STORAGE_OPTIONS"

# The storage options known to hold no secret, for s3fs, gcsfs and adlfs, and the nested ones of
# the containers among them. Everything else is a credential until listed here: an unknown key
# (`connection_string`, `profile`, `client_kwargs.aws_secret_access_key`, `s3_additional_kwargs`
# with an SSE key, ...) never reaches Prefect's stored parameters, the manifest or a log.
PLAIN_OPTIONS: dict[str, dict | None] = {
    "anon": None, "endpoint_url": None, "region_name": None, "use_ssl": None, "requester_pays": None, "version_aware": None,
    "default_block_size": None, "default_fill_cache": None, "default_cache_type": None, "cache_regions": None,
    "skip_instance_cache": None, "use_listings_cache": None, "listings_expiry_time": None, "max_concurrency": None,
    "fixed_upload_size": None, "max_paths": None, "asynchronous": None, "loop": None,
    "project": None, "access": None, "consistency": None, "requests_timeout": None, "default_location": None,  # gcsfs
    "account_name": None, "account_host": None,  # adlfs: the account's name, not its key
    "client_kwargs": {"endpoint_url": None, "region_name": None, "verify": None, "use_ssl": None, "api_version": None},
    "config_kwargs": {"signature_version": None, "connect_timeout": None, "read_timeout": None, "max_pool_connections": None,
                      "region_name": None, "tcp_keepalive": None, "parameter_validation": None, "user_agent_extra": None,
                      "request_checksum_calculation": None, "response_checksum_validation": None,
                      "retries": {"max_attempts": None, "total_max_attempts": None, "mode": None},
                      "s3": {"addressing_style": None, "use_accelerate_endpoint": None, "payload_signing_enabled": None}},
}


def split_options(options: dict | None, allowed: dict | None = None, prefix: str = "") -> tuple[dict, dict, list[str]]:
    """(plain, secret, secret key paths) of `options`, nested containers split key by key: a key
    is plain only if the allow-list names it (and, for a container, only its listed keys)."""
    allowed = PLAIN_OPTIONS if allowed is None else allowed
    plain: dict = {}
    secret: dict = {}
    paths: list[str] = []
    for key, value in (options or {}).items():
        path = f"{prefix}{key}"
        if key not in allowed:
            secret[key] = value
            paths.append(path)
        elif isinstance(allowed[key], dict) and isinstance(value, dict):
            inner_plain, inner_secret, inner_paths = split_options(value, allowed[key], f"{path}.")
            if inner_plain:
                plain[key] = inner_plain
            if inner_secret:
                secret[key] = inner_secret
            paths += inner_paths
        elif isinstance(allowed[key], dict):  # a container given as something else: not ours to judge
            secret[key] = value
            paths.append(path)
        else:
            plain[key] = value
    return plain, secret, paths


def check_no_secrets(options: dict | None) -> dict:
    """Flow parameters are stored by Prefect in plain text: refuse any option the allow-list does
    not know to be harmless, nested ones included."""
    options = dict(options or {})
    _, _, secret = split_options(options)
    if secret:
        raise InputError(
            f"storage option(s) {sorted(secret)} may be credentials (only known non-secret options travel as flow parameters): pass them "
            f"through --storage-option (kept in this process), the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            f"{STORAGE_OPTIONS_ENV}) or a Prefect block (MINORITY_STORAGE_BLOCK)"
        )
    return options


def merge_options(base: dict, extra: dict) -> dict:
    """`extra` over `base`, nested containers merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = merge_options(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def resolve_storage_options(plain: dict | None) -> dict:
    """Flow-parameter options merged with credentials from the environment (never stored by Prefect)."""
    secret = json.loads(os.environ.get(STORAGE_OPTIONS_ENV, "{}") or "{}")
    return merge_options(check_no_secrets(plain), secret)


def parse_storage_options(pairs: tuple[str, ...] | list[str]) -> tuple[dict, dict]:
    """`key=value` pairs → (plain options for the flow, credential options kept out of Prefect)."""
    given: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--storage-option must be key=value, got {pair!r}")
        try:
            parsed = json.loads(value) if value[:1] in "{[" or value in ("true", "false") else value
        except json.JSONDecodeError as exc:
            raise InputError(f"--storage-option {key}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if key == "endpoint_url":  # s3fs takes it inside client_kwargs
            key, parsed = "client_kwargs", {"endpoint_url": parsed}
        given = merge_options(given, {key: parsed})
    plain, secret, _ = split_options(given)
    return plain, secret


def export_secret_options(secret: dict) -> None:
    """Credentials for this process (and what it starts) only, through the environment; added
    to those already there (a block's keys, then `--storage-option secret=...` on top)."""
    if secret:
        current = json.loads(os.environ.get(STORAGE_OPTIONS_ENV, "{}") or "{}")
        os.environ[STORAGE_OPTIONS_ENV] = json.dumps(merge_options(current, secret))
