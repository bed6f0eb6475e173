"""Bearer-token check shared by the engine's control endpoints and the buffer's API."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request


def require_token(expected: str | None):
    """A FastAPI dependency: 401 unless `Authorization: Bearer <expected>` (no-op if None)."""

    async def check(request: Request) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given, expected):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    return check


def auth_headers(tok: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"} if tok else {}
