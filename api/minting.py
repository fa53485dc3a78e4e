"""Development tokens: HS256 JWTs signed with the shared secret (``tickstock token``, the tests, the ops
scripts). Production tokens come from an identity provider and are checked against its key set."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from joserfc import jwt
from joserfc.jwk import OctKey

__all__ = ["mint_token"]


def mint_token(
    secret: str,
    *,
    subject: str,
    scopes: Iterable[str],
    ttl_s: float = 3600,
    issuer: str = "tickstock-hub",
    audience: str = "tickstock",
    not_before: float | None = None,
) -> str:
    """An HS256 development token (``tickstock token`` and the tests)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "scope": " ".join(scopes),
        "iat": now,
        "exp": int(now + ttl_s),
        "iss": issuer,
        "aud": audience,
    }
    if not_before is not None:
        claims["nbf"] = int(not_before)
    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(secret))
