"""Storage options: plain ones travel as flow parameters, credentials never do.

Prefect stores flow parameters in plain text, so anything that looks like a credential is
refused there. Credentials reach the writing processes by channels that no unrelated process
sees: a JSON file of mode 0600 (`--storage-options-file`, `$MINORITY_STORAGE_OPTIONS_FILE`) or a
Prefect block, read by the driver into this process's memory (`keep_secret_options`), and handed
to the Ray actors as constructor arguments (never argv, never an environment variable). The
command line is visible to every user of the machine (`ps`), so a credential there is refused;
`$MINORITY_STORAGE_OPTIONS` still works, and the CLI moves it out of its environment before it
starts the Prefect server or Ray, so their daemons do not inherit it.
"""

from __future__ import annotations

import json
import os
import stat

from minority_core.errors import InputError

STORAGE_OPTIONS_ENV = "MINORITY_STORAGE_OPTIONS"
STORAGE_OPTIONS_FILE_ENV = "MINORITY_STORAGE_OPTIONS_FILE"
MAX_OPTIONS_FILE_BYTES = 1 << 20
_KEPT: dict = {}  # credential options of this process: in memory, not in os.environ (which children inherit)
HOW_TO_PASS = (f"put them in a JSON file only you can read (chmod 600) and pass --storage-options-file FILE (or ${STORAGE_OPTIONS_FILE_ENV}), "
               f"or use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ${STORAGE_OPTIONS_ENV} or a Prefect block (MINORITY_STORAGE_BLOCK)")

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
        raise InputError(f"storage option(s) {sorted(secret)} may be credentials (only known non-secret options travel as flow parameters): {HOW_TO_PASS}")
    return options


def merge_options(base: dict, extra: dict) -> dict:
    """`extra` over `base`, nested containers merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = merge_options(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def resolve_storage_options(plain: dict | None) -> dict:
    """Flow-parameter options merged with the credentials of this process (never stored by
    Prefect): $MINORITY_STORAGE_OPTIONS, then the file of $MINORITY_STORAGE_OPTIONS_FILE, then
    those kept in memory (a block, --storage-options-file)."""
    merged = check_no_secrets(plain)
    for layer in (_from_environment(), read_options_file(os.environ[STORAGE_OPTIONS_FILE_ENV]) if os.environ.get(STORAGE_OPTIONS_FILE_ENV) else {}, _KEPT):
        merged = merge_options(merged, layer)
    return merged


def _from_environment() -> dict:
    text = os.environ.get(STORAGE_OPTIONS_ENV, "") or "{}"
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"${STORAGE_OPTIONS_ENV} is not JSON ({exc.msg} at column {exc.colno}): give a JSON object of fsspec options") from None
    if not isinstance(options, dict):
        raise InputError(f"${STORAGE_OPTIONS_ENV} must be a JSON object of fsspec options, got {type(options).__name__}")
    return options


def parse_storage_options(pairs: tuple[str, ...] | list[str]) -> dict:
    """`key=value` pairs of the command line → plain options for the flow. A credential (any key
    the allow-list does not know) is refused: argv is readable by every user of the machine."""
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
    plain, _, secret_paths = split_options(given)
    if secret_paths:
        raise InputError(f"--storage-option {', '.join(secret_paths)}: may be a credential, and the command line is visible to every user "
                         f"of this machine (ps): {HOW_TO_PASS}")
    return plain


def read_options_file(path: str) -> dict:
    """The JSON object of fsspec options in `path`, refused unless only its owner (this user) can
    read or change it, as ssh does with keys."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise InputError(f"storage options file {path} does not exist: create it (a JSON object, chmod 600) or fix the path") from None
    except OSError as exc:
        raise InputError(f"cannot open storage options file {path} ({exc.strerror}): give a regular file of yours, not a link") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"storage options file {path} is not a regular file: give a JSON file")
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise InputError(f"storage options file {path} is readable or writable by others (mode {stat.filemode(info.st_mode)}, uid {info.st_uid}): "
                             f"run `chmod 600 {path}` as its owner")
        data = handle.read(MAX_OPTIONS_FILE_BYTES + 1)
    if len(data) > MAX_OPTIONS_FILE_BYTES:
        raise InputError(f"storage options file {path} is larger than {MAX_OPTIONS_FILE_BYTES >> 20} MiB: it should hold a small JSON object")
    try:
        options = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" ({exc.msg} at line {exc.lineno} column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise InputError(f"storage options file {path} is not UTF-8 JSON{where}: write a JSON object such as {{\"key\": ..., \"secret\": ...}}") from None
    if not isinstance(options, dict):
        raise InputError(f"storage options file {path} must hold a JSON object of fsspec options, not a {type(options).__name__}")
    if "endpoint_url" in options:  # as on the command line: s3fs takes it inside client_kwargs
        options = merge_options({k: v for k, v in options.items() if k != "endpoint_url"}, {"client_kwargs": {"endpoint_url": options["endpoint_url"]}})
    return options


def keep_secret_options(secret: dict) -> None:
    """Credentials for this process only, in memory (a block's keys, a file's), added to those kept
    already; the actors get them as arguments, the processes this one starts never inherit them."""
    if secret:
        merged = merge_options(_KEPT, secret)
        _KEPT.clear()
        _KEPT.update(merged)


def adopt_environment_secrets() -> None:
    """Move $MINORITY_STORAGE_OPTIONS from this process's environment into its memory, so that
    the Prefect server and the Ray daemons it starts do not inherit the credentials (the CLI
    calls it first). Its own /proc/PID/environ still shows what it was started with."""
    if os.environ.get(STORAGE_OPTIONS_ENV):
        keep_secret_options(_from_environment())
    os.environ.pop(STORAGE_OPTIONS_ENV, None)
