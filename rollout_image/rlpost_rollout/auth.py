"""Bearer-token check shared by the engine's control endpoints and the buffer's API."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request

UNAUTHORIZED = "missing or wrong bearer token"


def token_ok(request: Request, expected: str | None) -> bool:
    """`Authorization: Bearer <expected>` is present (always true if expected is None)."""
    if expected is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given, expected)


def require_token(expected: str | None):
    """A FastAPI dependency: 401 unless token_ok."""

    async def check(request: Request) -> None:
        if not token_ok(request, expected):
            raise HTTPException(status_code=401, detail=UNAUTHORIZED)

    return check


def auth_headers(tok: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"} if tok else {}
