"""One keep-alive HTTP connection to the monitor that another thread can cut at any moment.

`close(timeout)` must return in time even when the server accepted the connection and then went
silent. A socket blocked in `recv` is not woken by `close()` from another thread, but it is by
`shutdown()`: so the connection runs on httpcore (the engine under httpx) with a network backend
that remembers its sockets and shuts them down on `abort()`. httpx has no public hook for that.

httpcore's timeouts apply to each read and write: a server trickling one byte a second would
hold a request forever. The backend's streams clip every operation to the request's deadline,
so a request ends within its timeout whatever the server does.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpcore

DEFAULT_CONNECT_TIMEOUT_S = 2.0
DEFAULT_REQUEST_TIMEOUT_S = 5.0
USER_AGENT = "entmon-client/0.1"


class TransportError(Exception):
    """The request got no HTTP answer (refused, reset, timed out, aborted)."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body)

    def detail(self, limit: int = 500) -> str:
        """The server's explanation, for error messages."""
        return self.body[:limit].decode("utf-8", "replace")


class _Stream(httpcore.NetworkStream):
    """Delegates to httpcore's stream and tells the backend which socket it lives on."""

    def __init__(self, inner: httpcore.NetworkStream, backend: _AbortableBackend) -> None:
        self._inner = inner
        self._backend = backend
        backend._track(self)

    def socket(self) -> socket.socket | None:
        sock = self._inner.get_extra_info("socket")
        return sock if isinstance(sock, socket.socket) else None

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.clip(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.clip(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._backend._untrack(self)
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        self._backend._untrack(self)  # wrap_socket detaches this socket: track the TLS one
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout), self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AbortableBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._lock = threading.Lock()
        self._streams: set[_Stream] = set()
        self._aborted = False
        self.deadline = float("inf")  # time.monotonic() by which the current request must end

    def clip(self, timeout: float | None, error: type[Exception]) -> float:
        """The time one socket operation may take: what is left of the request's deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise error("the request's deadline passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        if self._aborted:
            raise httpcore.ConnectError("connection aborted (closing)")
        timeout = self.clip(timeout, httpcore.ConnectTimeout)
        inner = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(inner, self)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        if self._aborted:
            raise httpcore.ConnectError("connection aborted (closing)")
        timeout = self.clip(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options), self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def _track(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.add(stream)
        if self._aborted:  # lost the race with abort(): cut this one too
            self.abort()

    def _untrack(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def abort(self) -> None:
        self._aborted = True
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            sock = stream.socket()
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed or never connected
                    sock.shutdown(socket.SHUT_RDWR)


class MonitorConnection:
    """Requests to one monitor over (at most) one keep-alive connection; one caller at a time,
    plus `abort()` from any thread."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"monitor url must look like http://host:port, got {url!r}")
        self.url = url.rstrip("/")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path  # a monitor mounted under a path prefix
        self._headers = [
            (b"Host", parts.netloc.encode()),
            (b"User-Agent", USER_AGENT.encode()),
            (b"Accept", b"application/json"),
        ]
        if token:
            self._headers.append((b"Authorization", f"Bearer {token}".encode()))
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self._backend = _AbortableBackend()
        self._pool = httpcore.ConnectionPool(
            max_connections=1,
            max_keepalive_connections=1,
            network_backend=self._backend,
            ssl_context=ssl.create_default_context() if parts.scheme == "https" else None,
        )

    def run_path(self, run: str, tail: str) -> str:
        return f"{self._prefix}/v1/runs/{quote(run, safe='')}/{tail}"

    def post_reports(
        self, run: str, lines: list[bytes], *, timeout_s: float | None = None
    ) -> Reply:
        """POST encoded reports (one JSON object each) as one JSON array."""
        body = b"[" + b",".join(lines) + b"]"
        return self.request("POST", self.run_path(run, "reports"), body, timeout_s=timeout_s)

    def get_control(self, run: str, *, timeout_s: float | None = None) -> Reply:
        return self.request("GET", self.run_path(run, "control"), timeout_s=timeout_s)

    def request(
        self, method: str, path: str, body: bytes = b"", *, timeout_s: float | None = None
    ) -> Reply:
        """Raises TransportError when no whole HTTP answer came back within the timeout (the
        whole request: connecting, sending and reading the answer)."""
        timeout = self.request_timeout_s if timeout_s is None else max(0.001, timeout_s)
        self._backend.deadline = time.monotonic() + timeout
        headers = list(self._headers)
        if body:
            headers += [(b"Content-Type", b"application/json")]
        timeouts = {
            "connect": min(self.connect_timeout_s, timeout),
            "read": timeout,
            "write": timeout,
            "pool": timeout,
        }
        try:
            response = self._pool.request(
                method,
                self._origin + path,
                headers=headers,
                content=body,
                extensions={"timeout": timeouts},
            )
        except Exception as e:  # httpcore's errors share no root; none may escape as a crash
            raise TransportError(f"{type(e).__name__}: {e}") from e
        finally:
            self._backend.deadline = float("inf")
        return Reply(response.status, response.content, _retry_after(response.headers))

    def abort(self) -> None:
        """Make the request in flight (if any) and every later one fail at once."""
        self._backend.abort()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pool.close()


def _retry_after(headers: list[tuple[bytes, bytes]]) -> float | None:
    for name, value in headers:
        if name.lower() == b"retry-after":
            with contextlib.suppress(ValueError):
                return max(0.0, float(value))
    return None
