"""``python -m server create-admin``: make the first administrator."""

from __future__ import annotations

from server.domain.accounts.passwords import check_password_policy, hash_password
from server.domain.accounts.services import normalize_email
from server.domain.tables.accounts import Role, User
from server.foundation.clock import now
from server.foundation.database import acquire_engine, release_engine
from server.foundation.errors import AppError
from server.foundation.settings import Settings


async def create_or_promote_admin(settings: Settings, email: str, full_name: str, password: str) -> str:
    """Create a verified admin account, or promote the existing account with that email."""
    email = normalize_email(email)
    engine = await acquire_engine(settings, (User,))
    try:
        existing = await User.select(User.id).where(User.email == email).first()
        if existing:
            await User.update({User.role: Role.admin}).where(User.id == existing["id"])
            return f"{email} is now an admin"
        try:
            check_password_policy(password, email=email)
        except AppError as exc:
            raise SystemExit(f"lounges: {exc.detail}") from None
        await User.insert(
            User(
                email=email,
                full_name=full_name,
                password_hash=await hash_password(password),
                role=Role.admin,
                email_verified_at=now(),
            )
        )
        return f"admin {email} created"
    finally:
        await release_engine(engine)
