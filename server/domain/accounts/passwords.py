"""Password policy and argon2id hashing (off the event loop)."""

from __future__ import annotations

import asyncio
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from server.foundation.errors import ValidationFailed

MIN_LENGTH = 10
MAX_LENGTH = 256

# argon2-cffi's defaults are RFC 9106's low-memory profile of argon2id.
_hasher = PasswordHasher()
# Verified against when the account does not exist, so timing does not tell.
_DUMMY_HASH = _hasher.hash("lounges-timing-equaliser")


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    text = (Path(__file__).with_name("common_passwords.txt")).read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def check_password_policy(password: str, *, email: str | None = None, field: str = "password") -> None:
    """Raise :class:`ValidationFailed` naming the rule ``password`` breaks."""
    problem: str | None = None
    if len(password) < MIN_LENGTH:
        problem = f"must be at least {MIN_LENGTH} characters"
    elif len(password) > MAX_LENGTH:
        problem = f"must be at most {MAX_LENGTH} characters"
    elif password.lower() in _common_passwords():
        problem = "is too common"
    elif email and email.split("@", 1)[0].lower() in password.lower() and len(email.split("@", 1)[0]) >= 4:
        problem = "must not contain your email address"
    if problem:
        raise ValidationFailed(
            f"{field} {problem}",
            code="weak_password",
            errors=[{"key": field, "message": f"{field} {problem}", "source": "body"}],
        )


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; spends the same time when there is no hash."""
    try:
        return await asyncio.to_thread(_hasher.verify, password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the stored hash used older argon2 parameters than today's."""
    return _hasher.check_needs_rehash(password_hash)
