"""Bearer-token roles: ingest tokens write reports and read; admin tokens may also change
controls and delete runs. Tokens are compared in constant time and never logged."""

from __future__ import annotations

import hashlib
import hmac
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


def _matches(token: str, candidates: list[str]) -> bool:
    found = False
    for c in candidates:  # no early exit: the time taken does not depend on which one matched
        found |= hmac.compare_digest(token.encode(), c.encode())
    return found


def authenticate(request: Request, settings: Settings, needed: Role) -> Principal:
    if not settings.auth_enabled:
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
