"""The channel log: names, offset assignment, the publication log and its rewrites.

Offsets come from one row per channel: ``UPDATE channels SET last_offset =
last_offset + 1 ... RETURNING`` inside the writer's transaction. The row lock
serialises writers of one channel (on any node), a rolled-back transaction
gives its number back, so stored offsets are strictly increasing with no gaps.
The publication is broadcast (:mod:`server.streams.broker`) only after the transaction commits.

Every publication is logged here, by one writer in two forms: :func:`publication_statement`,
one statement that takes the offset, lets the caller store its own rows at that
offset (e.g. a message) and logs the publication (what :func:`append` runs with no
rows of the caller's); and :func:`next_offset` then :func:`append` at that offset, for a
caller that must read its own rows back before it can say what the publication is.

A stored publication is rewritten in place (same offset, same epoch) when what
it says must no longer be readable: an edited or deleted message, an erased
author (:func:`rewrite`). After the commit, :func:`server.streams.broker.broadcast` replaces the entry
in the Redis history cache and tells every node, which replaces it in its ring.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from server.streams.tables import Channel, ChannelPublication

ChannelKind = Literal["lounge", "thread"]

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class ChannelName:
    """A parsed ``lounge:<uuid>`` or ``thread:<uuid>``."""

    kind: ChannelKind
    id: uuid.UUID

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, name: str) -> ChannelName | None:
        kind, sep, raw_id = name.partition(":")
        if not sep or kind not in ("lounge", "thread"):
            return None
        try:
            return cls(kind=kind, id=uuid.UUID(raw_id))  # type: ignore[arg-type]
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Publication:
    """A stored publication, ready to broadcast."""

    channel: str
    offset: int
    epoch: str
    data: dict[str, Any]
    rewrites: int = 0  # for a rewritten one: the channel's rewrite count it brought about


def new_epoch() -> str:
    return secrets.token_hex(4)


async def create_channel(name: str) -> None:
    """Create the offset sequence of a new channel (inside the caller's transaction)."""
    await Channel.insert(Channel(name=name, epoch=new_epoch(), last_offset=0))


async def delete_channel(name: str) -> None:
    await ChannelPublication.delete().where(ChannelPublication.channel == name)
    await Channel.delete().where(Channel.name == name)


async def has_history(name: str) -> bool:
    """Whether anything was ever published in the channel."""
    row = await Channel.select(Channel.last_offset).where(Channel.name == name).first()
    return bool(row and row["last_offset"] > 0)


def publication_statement(
    channel: str, data: str, *, rows: str = "", sources: tuple[str, ...] = (), returning: tuple[str, ...] = ()
) -> str:
    """The one statement that publishes in a channel: it takes the channel's next offset
    (the CTE ``taken``: ``name``, ``last_offset``, ``epoch``; the channel row stays locked
    until the transaction ends), runs the caller's CTEs ``rows`` (which may read ``taken``),
    and logs the publication whose data is the SQL expression ``data``. ``channel`` and
    ``data`` are SQL too (placeholders, in the caller's parameter style); ``data`` may
    read the caller's CTEs named in ``sources``, which must yield one row each (none: nothing
    is logged). The statement yields one row: ``offset``, ``epoch`` and the ``returning``
    expressions (which may read ``sources``)."""
    joined = "".join(f", {source}" for source in sources)
    extra = "".join(f", {expression}" for expression in returning)
    return f"""
WITH taken AS (
    UPDATE channels SET last_offset = last_offset + 1 WHERE name = {channel} RETURNING name, last_offset, epoch
), {rows + ", " if rows else ""}logged AS (
    INSERT INTO channel_publications (id, channel, "offset", data, created_at)
    SELECT gen_random_uuid(), taken.name, taken.last_offset, {data}, now() FROM taken{joined}
    RETURNING "offset"
)
SELECT logged."offset", taken.epoch{extra} FROM logged, taken{joined}
"""


_APPEND_SQL = publication_statement("{}", "{}::jsonb")


async def next_offset(name: str) -> tuple[int, str]:
    """Take the channel's next offset; the row stays locked until the transaction ends."""
    rows = await Channel.raw(
        "UPDATE channels SET last_offset = last_offset + 1 WHERE name = {} RETURNING last_offset, epoch", name
    )
    if not rows:
        raise LookupError(f"no channel {name}")
    return rows[0]["last_offset"], rows[0]["epoch"]


async def append(name: str, data: dict[str, Any], offset: int | None = None, epoch: str | None = None) -> Publication:
    """Store ``data`` in the channel's log at ``offset`` (from :func:`next_offset`), or at the
    next offset, taken in the same statement (:func:`publication_statement`), when not given."""
    if offset is None or epoch is None:
        rows = await ChannelPublication.raw(_APPEND_SQL, name, _encoder.encode(data).decode())
        if not rows:
            raise LookupError(f"no channel {name}")
        offset, epoch = rows[0]["offset"], rows[0]["epoch"]
    else:
        await ChannelPublication.insert(ChannelPublication(channel=name, offset=offset, data=data))
    return Publication(channel=name, offset=offset, epoch=epoch, data=data)


async def rewrite(name: str, offset: int, data: dict[str, Any]) -> Publication:
    """Replace the stored publication at ``offset`` with ``data`` (inside the caller's
    transaction). Offsets stay gapless: the entry keeps its offset and epoch, only what
    it says changes. The channel's ``rewrites`` count goes up by one, so a cache of the
    log that missed this rewrite's broadcast can tell. Pass the result to
    :func:`server.streams.broker.broadcast` as ``rewritten`` after the commit."""
    rows = await ChannelPublication.raw(
        """WITH counted AS (
               UPDATE channels SET rewrites = rewrites + 1 WHERE name = {} RETURNING epoch, rewrites
           )
           UPDATE channel_publications p SET data = {}::jsonb FROM counted
           WHERE p.channel = {} AND p."offset" = {} RETURNING counted.epoch, counted.rewrites""",
        name,
        _encoder.encode(data).decode(),
        name,
        offset,
    )
    if not rows:
        raise LookupError(f"no publication {offset} in {name}")
    return Publication(channel=name, offset=offset, epoch=rows[0]["epoch"], data=data, rewrites=rows[0]["rewrites"])
