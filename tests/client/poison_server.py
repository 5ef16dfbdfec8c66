"""The real service (uvicorn, Redis) with one test-only fault: any batch of reports holding the
user scalar `poison` is answered 500, as a report the service cannot handle would be.

    python -m tests.client.poison_server PORT   (ENTMON_REDIS_URL, ENTMON_DATA_DIR set)
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from monitor.main import create_app

MARKER = b'"poison":'

Scope = dict[str, Any]
Receive = Any
Send = Any


def poisoned(app: Any) -> Any:
    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if MARKER in body:
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"Internal Server Error"})
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # the client's disconnect, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return asgi


if __name__ == "__main__":
    port = int(sys.argv[1])
    uvicorn.run(poisoned(create_app()), host="127.0.0.1", port=port, log_level="warning")
