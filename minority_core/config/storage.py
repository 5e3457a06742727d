"""Storage options: plain ones travel as flow parameters, credentials never do.

Prefect stores flow parameters in plain text, so anything that looks like a credential is
refused there and reaches the processes that need it through the environment instead.
"""

from __future__ import annotations

import json
import os
import re

from minority_core.errors import InputError

SECRET_KEY = re.compile(r"(secret|password|token|key$|^key|credential|session)", re.IGNORECASE)
STORAGE_OPTIONS_ENV = "MINORITY_STORAGE_OPTIONS"


def check_no_secrets(options: dict | None) -> dict:
    """Flow parameters are stored by Prefect in plain text: refuse anything that looks like a credential."""
    options = dict(options or {})
    secret = sorted(k for k in options if SECRET_KEY.search(str(k)))
    if secret:
        raise InputError(
            f"storage option(s) {secret} look like credentials: pass them through the environment "
            f"(e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) or {STORAGE_OPTIONS_ENV}, never as flow parameters"
        )
    return options


def resolve_storage_options(plain: dict | None) -> dict:
    """Flow-parameter options merged with credentials from the environment (never stored by Prefect)."""
    secret = json.loads(os.environ.get(STORAGE_OPTIONS_ENV, "{}") or "{}")
    merged = {**check_no_secrets(plain), **secret}
    if "client_kwargs" in (plain or {}) and "client_kwargs" in secret:
        merged["client_kwargs"] = {**plain["client_kwargs"], **secret["client_kwargs"]}
    return merged


def parse_storage_options(pairs: tuple[str, ...] | list[str]) -> tuple[dict, dict]:
    """`key=value` pairs → (plain options for the flow, credential options kept out of Prefect)."""
    plain: dict = {}
    secret: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--storage-option must be key=value, got {pair!r}")
        try:
            parsed = json.loads(value) if value[:1] in "{[" or value in ("true", "false") else value
        except json.JSONDecodeError as exc:
            raise InputError(f"--storage-option {key}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        target = secret if SECRET_KEY.search(key) else plain
        if key == "endpoint_url":  # s3fs takes it inside client_kwargs
            target.setdefault("client_kwargs", {})["endpoint_url"] = parsed
        else:
            target[key] = parsed
    return plain, secret


def export_secret_options(secret: dict) -> None:
    """Credentials for this process (and what it starts) only, through the environment; added
    to those already there (a block's keys, then `--storage-option secret=...` on top)."""
    if secret:
        current = json.loads(os.environ.get(STORAGE_OPTIONS_ENV, "{}") or "{}")
        merged = {**current, **secret}
        if "client_kwargs" in current and "client_kwargs" in secret:
            merged["client_kwargs"] = {**current["client_kwargs"], **secret["client_kwargs"]}
        os.environ[STORAGE_OPTIONS_ENV] = json.dumps(merged)
