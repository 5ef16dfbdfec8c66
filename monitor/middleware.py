"""Pure ASGI middleware: request latency metric and the request body size limit."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitor.metrics import REPORTS_REJECTED, REQUEST_DURATION


class BodyTooLarge(Exception):
    pass


class LimitsAndTiming:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        limit = self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, send, limit)
            return
        seen = 0

        async def counting_receive() -> Message:  # chunked bodies carry no content-length
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:
            await self._too_large(scope, send, limit)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            REQUEST_DURATION.labels(scope["method"], template).observe(
                time.perf_counter() - started
            )

    @staticmethod
    async def _too_large(scope: Scope, send: Send, limit: int) -> None:
        if scope["path"].endswith("/reports"):
            REPORTS_REJECTED.labels("body_too_large").inc()
        body = json.dumps({"detail": f"request body over {limit} bytes"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
