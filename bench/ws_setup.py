"""Users, tokens and lounges for the WebSocket benchmarks, written to a JSON file for the load generator.

Registering 10,000 users through the API would take minutes (argon2 hashes
each password on purpose), so users and their login sessions are inserted in
SQL in one statement each, and their access tokens are minted with the
server's own :class:`server.domain.accounts.tokens.TokenKeys` and the same
``JWT_KEYS``. The server still verifies every token on ``connect``: the
signature, the claims, and that the session row exists, is neither revoked nor
expired and that the user is active. The lounge itself is created through the
API by an approved mentor (mentor row + role set in SQL, as the test helpers
do), and its members join through ``POST /api/v1/lounges/{id}/join``. Many lounges
(:func:`prepare_lounges`) are created through the same API by an admin on the mentor's
behalf, as a mentor's plan caps their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.stack import Server, http_json

log = logging.getLogger("bench")


@dataclass
class WsSetup:
    path: Path  # the JSON file handed to the load generator
    channels: list[str]
    users: int
    seconds: float


async def _insert_users(database_url: str, count: int, tag: str) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """``count`` verified, active users with one live session each; returns (user id, session id)."""
    import asyncpg

    users = [uuid.uuid4() for _ in range(count)]
    sessions = [uuid.uuid4() for _ in range(count)]
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction():
            await connection.execute(
                """
                INSERT INTO users (id, email, full_name, email_verified_at)
                SELECT u, 'bench-' || $2 || '-' || n || '@example.com', 'Bench User ' || n, now()
                FROM unnest($1::uuid[]) WITH ORDINALITY AS t(u, n)
                """,
                users,
                tag,
            )
            await connection.execute(
                """
                INSERT INTO user_sessions (id, "user", expires_at, user_agent, ip)
                SELECT s, u, now() + interval '1 day', 'lounges-bench', '127.0.0.1'
                FROM unnest($1::uuid[], $2::uuid[]) AS t(s, u)
                """,
                sessions,
                users,
            )
    finally:
        await connection.close()
    return list(zip(users, sessions, strict=True))


async def _make_mentor(database_url: str, user_id: uuid.UUID) -> uuid.UUID:
    """Make ``user_id`` an approved mentor; returns the mentor's id."""
    import asyncpg

    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction():
            mentor_id = await connection.fetchval(
                "INSERT INTO mentors (\"user\", headline, bio, status) VALUES ($1, 'Bench coach', '', 'approved')"
                " RETURNING id",
                user_id,
            )
            await connection.execute("UPDATE users SET role = 'mentor' WHERE id = $1", user_id)
    finally:
        await connection.close()
    return mentor_id


async def _make_admin(database_url: str, user_id: uuid.UUID) -> None:
    import asyncpg

    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("UPDATE users SET role = 'admin' WHERE id = $1", user_id)
    finally:
        await connection.close()


async def _insert_memberships(database_url: str, lounge_id: str, users: list[uuid.UUID]) -> None:
    """Active memberships of ``users`` in one statement: the row ``POST .../join`` writes."""
    import asyncpg

    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            """
            INSERT INTO lounge_memberships
                (id, lounge, "user", role, status, joined_at, last_read_offset, created_at, updated_at)
            SELECT gen_random_uuid(), $1::uuid, u, 'member', 'active', now(), 0, now(), now()
            FROM unnest($2::uuid[]) AS t(u)
            """,
            lounge_id,
            users,
        )
    finally:
        await connection.close()


def _join_all(server: Server, joins: list[tuple[str, str]], concurrency: int) -> None:
    """``POST /api/v1/lounges/{id}/join`` for every (lounge id, member's token)."""

    def join(lounge_and_token: tuple[str, str]) -> None:
        lounge_id, token = lounge_and_token
        status, body = http_json("POST", f"{server.base_url}/api/v1/lounges/{lounge_id}/join", token=token)
        if status != 200 or body.get("status") != "active":
            raise RuntimeError(f"join answered {status}: {body}")

    with ThreadPoolExecutor(concurrency) as executor:
        list(executor.map(join, joins))


def prepare(
    env: dict[str, str],
    server: Server,
    out_dir: Path,
    *,
    idle: int,
    subscribers: int,
    publishers: int,
    join_concurrency: int = 8,
    api_joins: int | None = None,
) -> WsSetup:
    """Create ``max(idle, subscribers + publishers) + 1`` users; the first ``subscribers +
    publishers`` join one lounge of the last (the mentor). With ``api_joins``, only that many
    join through the API, the rest get the same membership row in SQL (tens of thousands of
    joins one at a time through the lounge's row lock take minutes). Writes ``ws-setup.json``."""
    from server.domain.accounts.tokens import TokenKeys
    from server.foundation.settings import load_settings

    started = time.monotonic()
    members = subscribers + publishers
    count = max(idle, members) + 1
    tag = uuid.uuid4().hex[:8]
    pairs = asyncio.run(_insert_users(env["DATABASE_URL"], count, tag))
    keys = TokenKeys(load_settings(env))  # the server's JWT_KEYS, issuer, audience and token TTL
    tokens = [keys.issue(user, session)[0] for user, session in pairs]
    mentor_user, _ = pairs[-1]
    asyncio.run(_make_mentor(env["DATABASE_URL"], mentor_user))
    status, lounge = http_json(
        "POST",
        f"{server.base_url}/api/v1/lounges",
        {"title": "Benchmark lounge", "description": "python -m bench ws"},
        token=tokens[-1],
    )
    if status != 201:
        raise RuntimeError(f"creating the lounge answered {status}: {lounge}")
    through_api = members if api_joins is None else min(api_joins, members)
    _join_all(server, [(lounge["id"], token) for token in tokens[:through_api]], join_concurrency)
    if through_api < members:
        users = [user for user, _ in pairs[through_api:members]]
        asyncio.run(_insert_memberships(env["DATABASE_URL"], lounge["id"], users))
    payload = {
        "channel": lounge["channel"],
        "lounge_id": lounge["id"],
        "subscriber_tokens": tokens[:subscribers],
        "publisher_tokens": tokens[subscribers:members],
        "idle_tokens": tokens[: count - 1],
    }
    path = out_dir / "ws-setup.json"
    path.write_text(json.dumps(payload))
    seconds = time.monotonic() - started
    log.info(
        "setup: %d users with sessions and tokens, lounge %s with %d members, in %.1f s",
        count,
        lounge["channel"],
        members,
        seconds,
    )
    return WsSetup(path=path, channels=[lounge["channel"]], users=count, seconds=seconds)


def prepare_lounges(
    env: dict[str, str],
    server: Server,
    out_dir: Path,
    *,
    lounges: int,
    per_lounge: int,
    publishers: int,
    coach_lounges: int = 0,
    join_concurrency: int = 8,
) -> WsSetup:
    """``lounges`` lounges of one mentor, ``per_lounge`` subscribers in each (subscriber i
    joins lounge i mod ``lounges``, as the load generator subscribes them) and ``publishers``
    members of every lounge. Writes ``ws-setup.json`` with the lounges' ``channels``; with
    ``coach_lounges``, that many more lounges where the coach answers every message
    (``ai_reply_policy`` ``always``), ``per_lounge`` members of their own each, as
    ``coach_channels`` and ``coach_tokens`` (one list of tokens per lounge, the asker's first)."""
    from server.domain.accounts.tokens import TokenKeys
    from server.foundation.settings import load_settings

    started = time.monotonic()
    subscribers = lounges * per_lounge
    coach_members = coach_lounges * per_lounge
    count = subscribers + publishers + coach_members + 2  # + the mentor and an admin
    pairs = asyncio.run(_insert_users(env["DATABASE_URL"], count, uuid.uuid4().hex[:8]))
    keys = TokenKeys(load_settings(env))
    tokens = [keys.issue(user, session)[0] for user, session in pairs]
    mentor_id = asyncio.run(_make_mentor(env["DATABASE_URL"], pairs[-2][0]))
    asyncio.run(_make_admin(env["DATABASE_URL"], pairs[-1][0]))

    def create(title: str, **extra: str) -> dict:
        body = {"title": title, "mentor_id": str(mentor_id), **extra}
        status, lounge = http_json("POST", f"{server.base_url}/api/v1/lounges", body, token=tokens[-1])
        if status != 201:
            raise RuntimeError(f"creating {title} answered {status}: {lounge}")
        return lounge

    created = [create(f"Benchmark lounge {n + 1}") for n in range(lounges)]
    coached = [create(f"Coach lounge {n + 1}", ai_reply_policy="always") for n in range(coach_lounges)]
    subscriber_tokens = tokens[:subscribers]
    publisher_tokens = tokens[subscribers : subscribers + publishers]
    coach_tokens = [
        tokens[subscribers + publishers + n * per_lounge : subscribers + publishers + (n + 1) * per_lounge]
        for n in range(coach_lounges)
    ]
    joins = [(created[i % lounges]["id"], token) for i, token in enumerate(subscriber_tokens)]
    joins += [(lounge["id"], token) for lounge in created for token in publisher_tokens]
    joins += [(lounge["id"], token) for lounge, members in zip(coached, coach_tokens, strict=True) for token in members]
    _join_all(server, joins, join_concurrency)
    channels = [lounge["channel"] for lounge in created]
    path = out_dir / "ws-setup.json"
    path.write_text(
        json.dumps(
            {
                "channels": channels,
                "subscriber_tokens": subscriber_tokens,
                "publisher_tokens": publisher_tokens,
                "coach_channels": [lounge["channel"] for lounge in coached],
                "coach_tokens": coach_tokens,
            }
        )
    )
    seconds = time.monotonic() - started
    log.info(
        "setup: %d users with sessions and tokens, %d lounges, %d joins, in %.1f s", count, lounges, len(joins), seconds
    )
    return WsSetup(path=path, channels=channels, users=count, seconds=seconds)
