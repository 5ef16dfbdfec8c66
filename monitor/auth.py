"""Bearer-token roles: ingest tokens write reports and read; admin tokens may also change
controls and delete runs. Tokens are compared in constant time and never logged."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from enum import IntEnum

from fastapi import HTTPException, Request, status

from monitor.settings import Settings


class Role(IntEnum):
    INGEST = 1
    ADMIN = 2


@dataclass(frozen=True)
class Principal:
    role: Role
    who: str  # for the audit log: a short fingerprint of the token, never the token


def _only_local_json(request: Request) -> None:
    """Open access is for the operator's own machine: a web page in their browser must not get
    in. A loopback Host header defeats DNS rebinding (the page's origin resolving to 127.0.0.1
    still sends its own name); a JSON content type forces a CORS preflight, which this service
    never grants, so a cross-site form or text/plain POST cannot write."""
    host = request.headers.get("host", "")
    if not _is_loopback_host(host):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"Host {host!r} is not loopback: with no tokens configured only localhost, 127.0.0.1 "
            "and [::1] are served. Set ENTMON_INGEST_TOKENS / ENTMON_ADMIN_TOKENS to serve others",
        )
    if request.method in {"POST", "PUT", "PATCH"}:
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json" and not (
            media.startswith("application/") and media.endswith("+json")
        ):
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type {media or '(none)'!r}: send 'Content-Type: application/json'",
            )


def _is_loopback_host(host: str) -> bool:
    name = host.rpartition("]")[0].lstrip("[") if host.startswith("[") else host.partition(":")[0]
    name = name.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _matches(token: str, candidates: list[str]) -> bool:
    found = False
    for c in candidates:  # no early exit: the time taken does not depend on which one matched
        found |= hmac.compare_digest(token.encode(), c.encode())
    return found


def authenticate(request: Request, settings: Settings, needed: Role) -> Principal:
    if not settings.auth_enabled:
        _only_local_json(request)
        return Principal(Role.ADMIN, "anonymous")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if _matches(token, settings.admin_tokens):
        role = Role.ADMIN
    elif _matches(token, settings.ingest_tokens):
        role = Role.INGEST
    else:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "unknown token", headers={"WWW-Authenticate": "Bearer"}
        )
    if role < needed:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this action needs an admin token")
    fingerprint = hashlib.sha256(token.encode()).hexdigest()[:8]
    return Principal(role, f"{role.name.lower()}:{fingerprint}")
