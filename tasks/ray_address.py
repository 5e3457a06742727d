"""Where a Ray cluster should answer, and a check in seconds that it does.

Light on purpose (no Ray, no Prefect, no torch): the CLI runs it before it starts anything, so a
wrong `--ray-address` is one line within seconds instead of `ray.init`'s minutes of retries.
"""

from __future__ import annotations

import socket

from minority_core.errors import InputError

ADDRESS_PROBE_S = 5.0  # how long `check_ray_address` waits for the head to accept a connection (refused: at once)


def ray_endpoint(address: str | None) -> tuple[str, int] | None:
    """(host, port) that must accept TCP connections for `address` to work; None where Ray
    finds the cluster itself (`auto`, `local`, no address)."""
    if not address or address in ("auto", "local"):
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray-address {address!r} is not HOST:PORT (or ray://HOST:PORT); give the head's GCS address, e.g. 10.0.0.5:6379")
    return host.strip("[]"), int(port)


def accepts(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether something accepts a TCP connection at host:port within `timeout`."""
    return connect_error(host, port, timeout) is None


def connect_error(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to host:port fails ("connection refused", ...), or None if it opens."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:.0f} s"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def check_ray_address(address: str | None) -> None:
    """Fail in seconds, in one line, where nothing answers at `address` (`ray.init` itself retries
    for minutes, after rewriting localhost to the node's IP)."""
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return
    host, port = endpoint
    if (why := connect_error(host, port, ADDRESS_PROBE_S)) is not None:
        raise InputError(f"no Ray cluster answers at {address!r} ({host}:{port}: {why}): start its head with "
                         f"`ray start --head --port {port}`, or fix --ray-address / $RAY_ADDRESS")
