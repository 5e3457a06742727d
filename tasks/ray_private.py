"""Local Ray that only this machine's user can reach: every process on loopback, token auth on.

`ray.init()` on Linux binds gcs_server, raylets, workers and the agents to all interfaces
(`*:port`), and rewrites a `_node_ip_address` of 127.0.0.1 to the node's routable IP. Ray only
keeps a node on loopback where it thinks clusters are unsupported (`ENABLE_RAY_CLUSTER` false,
as on macOS/Windows): `get_node_ip_address()` then answers 127.0.0.1 and every process is started
with that address. So the driver turns that constant off for the one `ray.init` that starts a
local node (the children get the address on their command lines) and back on afterwards.

Token auth (`RAY_AUTH_MODE=token`, which the pinned Ray 2.60 has): Ray's own default would write a new token to
`~/.ray/auth_token` with the umask's mode (often world-readable); instead the token lives in a
0600 file in a 0700 folder of this user, named by `RAY_AUTH_TOKEN_PATH` (a path, no secret, in
the environment the Ray processes inherit). An operator's own RAY_AUTH_MODE / RAY_AUTH_TOKEN /
RAY_AUTH_TOKEN_PATH win. Joining a cluster (`--ray-address`) changes none of this: that
cluster's own settings apply.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from minority_core.errors import InputError

TOKEN_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def token_path() -> Path:
    """This user's private Ray token file (created once: 0700 folder, 0600 file, 256 random bits)."""
    folder = Path(tempfile.gettempdir()) / f"minority-synth-ray-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {folder} for the local Ray token ({exc.strerror}): set TMPDIR to a writable folder") from None
    _check_private(folder, stat.S_ISDIR)
    path = folder / "auth_token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        _check_private(path, stat.S_ISREG)
        return path
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path


def _check_private(path: Path, kind) -> None:
    """Refuse a token path that another user could have planted or can read."""
    info = os.lstat(path)
    if not kind(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise InputError(
            f"{path} is not a private {'folder' if kind is stat.S_ISDIR else 'file'} of this user (mode "
            f"{stat.filemode(info.st_mode)}, uid {info.st_uid}): remove it, or set TMPDIR elsewhere, and rerun"
        )


def enable_token_auth() -> None:
    """Token auth for the local cluster about to start, unless the operator chose otherwise."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if not any(os.environ.get(name) for name in TOKEN_ENV):
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path())
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray caches its config: this process must see token mode too (what Ray's own default does)
        from ray._raylet import Config

        Config.initialize("")
    except ImportError:  # a Ray without token auth: nothing to refresh
        pass


@contextmanager
def loopback_only() -> Iterator[None]:
    """Within the block, Ray takes this node's address to be 127.0.0.1 (see the module's docstring)."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def start_private_ray(**kwargs) -> None:
    """`ray.init` of a new local instance (never an existing `ray start` cluster), loopback only, token auth on."""
    import ray

    enable_token_auth()
    with loopback_only():
        ray.init(address="local", **kwargs)
