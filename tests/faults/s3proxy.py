"""A loopback HTTP proxy in front of moto that injects storage faults (503s, dropped connections).

Real sockets, real HTTP: the S3 client (s3fs/aiobotocore) talks to this proxy exactly as it
would to a flaky S3 endpoint. Which requests fail is deterministic (a Bresenham pattern over
the request count), so a share of 1/3 never fails two requests in a row.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SERVICE_UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>injected by the fault proxy</Message></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class FaultProxy:
    """`share` of requests fail, cycling through `kinds`:

    503        answer 503 ServiceUnavailable without forwarding
    drop       close the connection without forwarding or answering
    drop_after forward to moto (the request takes effect), then close without answering
    """

    def __init__(self, upstream: str, share: float = 0.0, kinds: tuple[str, ...] = ("503", "drop", "drop_after")) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.share = share
        self.kinds = kinds
        self.lock = threading.Lock()
        self.requests = 0
        self.failures = 0
        self.injected: dict[str, int] = {k: 0 for k in ("503", "drop", "drop_after")}
        self.log: list[tuple[str, str, str]] = []  # (method, path, outcome)
        self.fail_all_after: str | None = None  # a regex on the path: once a PUT to it succeeds, fail everything
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                body = self._read_body()
                fault = proxy._decide()
                if fault == "503":
                    proxy._record(self.command, self.path, "503")
                    payload = b"" if self.command == "HEAD" else SERVICE_UNAVAILABLE
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SERVICE_UNAVAILABLE)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                    self.close_connection = True
                    return
                if fault == "drop":
                    proxy._record(self.command, self.path, "drop")
                    self._drop()
                    return
                status, headers, data = self._forward(body)
                if fault == "drop_after":
                    proxy._record(self.command, self.path, f"drop_after({status})")
                    self._drop()
                    return
                proxy._record(self.command, self.path, str(status))
                if self.command == "PUT" and proxy.fail_all_after and re.search(proxy.fail_all_after, self.path.split("?")[0]) and status < 300:
                    with proxy.lock:
                        proxy.share = 1.0
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)) if self.command != "HEAD" else dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                self.close_connection = True

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length", "0") or 0)
                return self.rfile.read(length) if length else b""

            def _forward(self, body: bytes):
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    return resp.status, resp.getheaders(), data
                finally:
                    conn.close()

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    def _decide(self) -> str | None:
        with self.lock:
            n = self.requests
            self.requests += 1
            if int((n + 1) * self.share) > int(n * self.share):  # exactly `share` of requests, spread out
                kind = self.kinds[self.failures % len(self.kinds)]
                self.failures += 1
                self.injected[kind] += 1
                return kind
            return None

    def _record(self, method: str, path: str, outcome: str) -> None:
        with self.lock:
            self.log.append((method, path, outcome))

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
