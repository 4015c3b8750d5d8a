"""The message store: one service for every post, edit, deletion, reaction and read
mark in a lounge or thread, used by REST and by the socket gateway alike.

Each write takes the channel's next offset, stores the message (or the change)
and the publication subscribers will receive, commits, then broadcasts (a post in
one statement, the other writes in a unit of work whose commit runs the broadcast:
:mod:`server.foundation.unit_of_work`).
Posts are idempotent by ``(sender, client_id)``: a retry returns the stored
message and stores nothing new.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
import msgspec

from server.domain.access.policy import ChannelAccess, channel_access
from server.domain.accounts.services import Principal
from server.domain.capsules.services import sealed_file_ids
from server.domain.chat.coach_link import maybe_answer, stop_replies_to
from server.domain.chat.rows import (
    LockedMessage,
    MentioningMessage,
    MessageRef,
    message_out,
    select_channel_page,
    select_messages,
)
from server.domain.chat.schemas import MessageIn, MessageOut, MessagePage, ReadOut, SenderOut
from server.domain.llm.providers import Usage
from server.domain.notifications.services import forget_mentions, notify_mentions, rename_mentions, reword_mentions
from server.domain.push.delivery import queue_lounge_message_push
from server.domain.tables.chat import ChatThread, Message, MessageReaction, MessageStatus, SenderType
from server.domain.tables.files import File
from server.domain.tables.lounges import LoungeMembership
from server.foundation import metrics
from server.foundation.clock import now
from server.foundation.errors import Conflict, Forbidden, NotFound, RateLimited, ValidationFailed
from server.foundation.finishing import Finisher
from server.foundation.pagination import decode_cursor, encode_cursor
from server.foundation.redis import REDIS_ERRORS
from server.foundation.settings import parse_rate
from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work
from server.streams.broker import broadcast
from server.streams.channels import Publication, append, next_offset, publication_statement, rewrite
from server.streams.tables import Channel, ChannelPublication

_json = msgspec.json.Encoder()
log = logging.getLogger("lounges.chat")
COACH_QUEUE_TIMEOUT = 1.0  # seconds a post waits to queue its coach reply


# -- reads ---------------------------------------------------------------------------------


async def get_message(channel: str, offset: int) -> MessageOut:
    rows = await select_messages(' WHERE m.channel = {} AND m."offset" = {}', channel, offset)
    if not rows:
        raise NotFound("no message at that offset", code="message_not_found")
    return message_out(rows[0])


async def history(
    access: ChannelAccess, *, before: int | None, after: int | None, limit: int, cursor: str | None = None
) -> MessagePage:
    """A page of messages in offset order: the newest before ``before``, the oldest
    after ``after``, or the newest of all; ``cursor`` (a page's ``next_cursor``) goes on
    the way its page went: older from a ``before`` page or the newest, newer from an ``after`` page."""
    channel = str(access.name)
    if sum(given is not None for given in (before, after, cursor)) > 1:
        raise ValidationFailed("give one of before, after and cursor", code="invalid_pagination")
    if cursor is not None:
        direction, position = decode_cursor(cursor, ["text", "bigint"])
        if direction not in ("before", "after") or position < 0:
            raise ValidationFailed("the cursor is not one this API handed out", code="invalid_cursor")
        before, after = (position, None) if direction == "before" else (None, position)
    if after is not None:
        last_offset, rows = await select_channel_page(
            channel, ' AND m."offset" > {} ORDER BY m."offset" LIMIT {}', after, limit + 1
        )
    else:
        last_offset, rows = await select_channel_page(
            channel,
            ' AND m."offset" < {} ORDER BY m."offset" DESC LIMIT {}',
            before if before is not None else 2**62,
            limit + 1,
        )
    # In offset order (the statement around the page does not promise the page's own order);
    # the one row past the limit is the oldest of a page going back, the newest going forward.
    rows.sort(key=lambda row: row.offset)
    has_more = len(rows) > limit
    rows = rows[:limit] if after is not None else rows[-limit:]
    items = [message_out(r) for r in rows]
    next_cursor = None
    if has_more:
        next_cursor = encode_cursor(["after", items[-1].offset] if after is not None else ["before", items[0].offset])
    return MessagePage(items=items, next_cursor=next_cursor, last_offset=last_offset)


# -- writes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostResult:
    message: MessageOut
    created: bool
    publication: Publication | None


async def _existing_post(sender: uuid.UUID, client_id: uuid.UUID, channel: str) -> MessageOut | None:
    rows = await select_messages(" WHERE m.sender = {} AND m.client_id = {}", sender, client_id)
    if not rows:
        return None
    if rows[0].channel != channel:
        raise Conflict("client_id was already used for a message in another channel", code="client_id_reused")
    return message_out(rows[0])


# A post in one statement (the streams layer's publication statement, with the message's
# rows added): take the channel's next offset, store the message and its attachments,
# touch the thread, log the publication. The channel row is locked only for this
# statement (which commits at once), so concurrent posters on every node wait for each
# other for well under a millisecond; a later offset is still only taken after the
# earlier one committed (guarantee 2). The publication is built in Python; the statement
# fills in its offset and the sender's name.
_POST_SQL = publication_statement(
    "$1",
    """jsonb_set(jsonb_set($10::jsonb, ARRAY['message', 'offset'], to_jsonb(stored."offset")),
                 ARRAY['message', 'sender', 'full_name'], to_jsonb(author.full_name))""",
    rows="""author AS (
    SELECT coalesce((SELECT full_name FROM users WHERE id = $3), '') AS full_name
), stored AS (
    INSERT INTO messages (id, channel, "offset", sender_type, sender, client_id, text, reply_to, status, meta, created_at)
    SELECT $2, taken.name, taken.last_offset, $4, $3, $5, $6, $7, 'complete', jsonb_build_object(), $8 FROM taken
    RETURNING "offset"
), attached AS (
    INSERT INTO message_attachments (id, message, file, created_at)
    SELECT gen_random_uuid(), $2, a.file, $8 + a.n * interval '1 microsecond'
    FROM stored, unnest($9::uuid[]) WITH ORDINALITY AS a(file, n)
), touched AS (
    UPDATE chat_threads SET updated_at = $8 WHERE id = $11 AND EXISTS (SELECT 1 FROM stored)
)""",
    sources=("stored", "author"),
    returning=("author.full_name",),
)


_POST_SECONDS = metrics.DB_STATEMENT_SECONDS.labels("post_message")


async def do_post_message(state: AppState, principal: Principal, channel: str, data: MessageIn) -> PostResult:
    """Post ``data``; the rate limit is charged only if the message is stored (a post refused,
    or cut short by a stalled database, gives its attempt back)."""
    charged: list[str] = []
    try:
        return await _post_message(state, principal, channel, data, charged)
    except BaseException:
        await _refund(state, charged)
        raise


async def _refund(state: AppState, charged: list[str]) -> None:
    """Give back the rate-limit attempts of a post that stored nothing new."""
    for key in charged:
        await state.limiter.refund(key)
    charged.clear()


async def _checked_post(
    state: AppState, principal: Principal, name: str, data: MessageIn, charged: list[str]
) -> tuple[str, list[uuid.UUID]]:
    """Charge the poster's rate limit and check the post: its text and attachments as stored."""
    # One budget per user for every way of posting (socket or REST), shared by all nodes.
    limit_key = f"publish:{principal.user_id}"
    await state.limiter.hit(limit_key, *parse_rate("PUBLISH_RATE_LIMIT", state.settings.publish_rate_limit))
    charged.append(limit_key)
    text = data.text.strip()
    if not text and not data.attachments:
        raise ValidationFailed("a message needs text or an attachment", code="empty_message")
    if len(text) > state.settings.message_max_length:
        raise ValidationFailed(
            f"text is longer than {state.settings.message_max_length} characters", code="message_too_long"
        )
    attachments = list(dict.fromkeys(data.attachments))
    # Checked before the offset is taken: an earlier message never vanishes (deletion
    # leaves a tombstone), and only its owner removes a file.
    if data.reply_to is not None and not await Message.exists().where(
        Message.channel == name, Message.offset == data.reply_to
    ):
        raise ValidationFailed("reply_to is not a message of this channel", code="invalid_reply_to")
    if attachments:
        owned = await File.count().where(
            File.id.is_in(attachments), File.owner == principal.user_id, File.status == "ready"
        )
        if owned != len(attachments) or await sealed_file_ids(attachments):
            raise ValidationFailed("attachments must be your own uploaded files", code="invalid_attachment")
    return text, attachments


async def _post_message(
    state: AppState, principal: Principal, channel: str, data: MessageIn, charged: list[str]
) -> PostResult:
    access = await channel_access(principal, channel, write=True)
    name = str(access.name)
    # A retry (same client_id) is found by the insert's unique index, below, not looked up
    # on every post; a refused retry still answers with the message stored before.
    try:
        text, attachments = await _checked_post(state, principal, name, data, charged)
    except (RateLimited, ValidationFailed):
        existing = await _existing_post(principal.user_id, data.client_id, name)
        if existing is None:
            raise
        await _refund(state, charged)
        return PostResult(message=existing, created=False, publication=None)
    draft = MessageOut(
        id=uuid.uuid4(),
        channel=name,
        offset=0,  # the offset and the sender's name come from the statement
        sender=SenderOut(id=principal.user_id, full_name="", type=access.sender_type),
        client_id=data.client_id,
        text=text,
        reply_to=data.reply_to,
        attachments=attachments,
        reactions={},
        status=MessageStatus.complete,
        meta={},
        edited_at=None,
        deleted=False,
        created_at=now(),
    )
    pool = state.engine.pool
    assert pool is not None  # started by acquire_engine before the app serves
    # Waiting for a connection may be cancelled (a 108 sheds that load: nothing was sent).
    # Once the statement is sent the post is finished, its effects included, even if the
    # command is answered 108 meanwhile: a post stored but not broadcast would be a hole
    # that its channel's subscribers wait behind. A retry with its client_id finds it.
    finisher = Finisher()
    try:
        async with pool.acquire() as connection:
            started = time.perf_counter()
            row = await finisher.run(
                connection.fetchrow(
                    _POST_SQL,
                    name,
                    draft.id,
                    principal.user_id,
                    access.sender_type.value,
                    data.client_id,
                    text,
                    data.reply_to,
                    draft.created_at,
                    attachments,
                    _json.encode({"type": "message", "message": draft}).decode(),
                    access.thread.id if access.thread is not None else None,
                )
            )
            if metrics.collecting:
                _POST_SECONDS.observe(time.perf_counter() - started)
    except asyncpg.UniqueViolationError:
        # A retry: this client_id's message is stored already (by an earlier attempt, or by a
        # concurrent one that won the race). Answer with it; the retry costs no budget.
        finisher.raise_if_cancelled()
        existing = await _existing_post(principal.user_id, data.client_id, name)
        if existing is None:
            raise
        await _refund(state, charged)
        return PostResult(message=existing, created=False, publication=None)
    if row is None:
        raise LookupError(f"no channel {name}")
    charged.clear()  # stored: whatever happens next, this post was accepted work
    offset: int = row["offset"]
    message = msgspec.structs.replace(
        draft, offset=offset, sender=msgspec.structs.replace(draft.sender, full_name=row["full_name"])
    )
    publication = Publication(
        channel=name,
        offset=offset,
        epoch=row["epoch"],
        data={"type": "message", "message": msgspec.to_builtins(message)},
    )
    await finisher.run(_after_post(state, access, principal, message, publication))
    finisher.raise_if_cancelled()
    return PostResult(message=message, created=True, publication=publication)


async def _after_post(
    state: AppState, access: ChannelAccess, principal: Principal, message: MessageOut, publication: Publication
) -> None:
    """A stored post's effects: its broadcast, the coach's reply, mentions, pushes (none raises)."""
    name, offset = publication.channel, publication.offset
    await broadcast(state, [publication])
    try:  # the message is stored: a coach reply that cannot be queued (Redis away) must not undo its ack
        async with asyncio.timeout(COACH_QUEUE_TIMEOUT):
            await maybe_answer(
                state,
                channel=name,
                kind=access.name.kind,
                lounge=access.lounge.lounge if access.lounge is not None else None,
                asker=principal.user_id,
                offset=offset,
                text=message.text,
            )
    except REDIS_ERRORS as exc:
        log.warning("coach reply not queued", extra={"channel": name, "offset": offset, "error": repr(exc)})
    # After the coach's job: the asker waits for its first token, nobody waits for these.
    await notify_mentions(state, name, message)
    if access.name.kind == "lounge":  # to the members who are away (never raises)
        await queue_lounge_message_push(state, name, offset)


class ReplyAlreadyStored(Exception):
    """The coach's reply of this stream is stored already (see :func:`do_store_ai_reply`)."""


async def do_store_ai_reply(
    state: AppState,
    *,
    channel: str,
    reply_to: int,
    stream_id: str,
    text: str,
    status: MessageStatus,
    provider: str,
    model: str,
    usage: Usage,
    meta: dict[str, Any],
) -> tuple[Publication, uuid.UUID]:
    """Store the coach's finished (or cancelled, or failed) reply at the channel's next
    offset; the publication is ``ai.end``, or ``ai.error`` when it failed. Broadcast it
    after this returns.

    At most once per ``stream_id``: a reply's worker and the reaper that declared that
    worker dead may both try to end it, so :class:`ReplyAlreadyStored` is raised (and
    nothing written) when the stream's reply is already stored."""
    message_id = uuid.uuid4()
    async with unit_of_work(state.engine):
        # Taken before the channel's row (the order a deletion takes them in): a deletion of the
        # message answered either sees this reply or is seen by it (privacy: the reply may quote it).
        asked = await Message.raw(
            'SELECT deleted_at FROM messages WHERE channel = {} AND "offset" = {} FOR SHARE', channel, reply_to
        )
        offset, epoch = await next_offset(channel)
        # The channel's row is locked by next_offset: two writers of one stream serialise here.
        if await Message.raw(
            "SELECT 1 FROM messages WHERE channel = {} AND sender_type = 'ai' AND meta->>'stream_id' = {} LIMIT 1",
            channel,
            stream_id,
        ):
            raise ReplyAlreadyStored(stream_id)
        await Message.insert(
            Message(
                id=message_id,
                channel=channel,
                offset=offset,
                sender_type=SenderType.ai,
                sender=None,
                text=text,
                reply_to=reply_to,
                status=status,
                provider=provider,
                model=model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                meta={**meta, "stream_id": stream_id},
            )
        )
        if asked and asked[0]["deleted_at"] is not None:
            await erase_text([message_id])  # the answer goes with the message it answered
        message = await get_message(channel, offset)
        kind = "ai.error" if status == MessageStatus.failed else "ai.end"
        publication = await append(
            channel,
            {"type": kind, "stream_id": stream_id, "message": msgspec.to_builtins(message)},
            offset=offset,
            epoch=epoch,
        )
        await ChatThread.update({ChatThread.updated_at: now()}).where(ChatThread.channel == channel)
    return publication, message_id


async def _touch_thread(access: ChannelAccess) -> None:
    if access.thread is not None:
        await ChatThread.update({ChatThread.updated_at: now()}).where(ChatThread.id == access.thread.id)


async def _locked_message(name: str, offset: int) -> LockedMessage:
    rows = await Message.raw(
        'SELECT id, sender, sender_type, deleted_at FROM messages WHERE channel = {} AND "offset" = {} FOR UPDATE',
        name,
        offset,
    )
    if not rows:
        raise NotFound("no message at that offset", code="message_not_found")
    return msgspec.convert(rows[0], LockedMessage)


async def rewrite_message_log(name: str, offset: int) -> list[Publication]:
    """Rewrite every stored publication of the message at ``offset`` to what the message
    is now (inside the caller's transaction, after its row changed), so no earlier text
    stays readable in history or recovery: its own publication (``message``, ``ai.end``,
    ``ai.error``) carries the current ``MessageOut`` (a tombstone once deleted: no text,
    attachments, meta or reactions), and each ``message.edited`` of it the current text,
    or becomes ``message.deleted`` once the message is gone. Offsets do not move.
    Returns the rewritten publications for :func:`broadcast`'s ``rewritten``."""
    message = await get_message(name, offset)
    rows = await ChannelPublication.raw(
        'SELECT "offset", data::text AS data FROM channel_publications WHERE channel = {} AND "offset" >= {} '
        'AND ("offset" = {} OR data @> {}::jsonb) ORDER BY "offset"',
        name,
        offset,
        offset,
        _json.encode({"type": "message.edited", "message_offset": offset}).decode(),
    )
    edited: dict[str, Any] = (
        {"type": "message.deleted", "message_offset": offset}
        if message.deleted
        else {
            "type": "message.edited",
            "message_offset": offset,
            "text": message.text,
            "edited_at": message.edited_at.isoformat() if message.edited_at else None,
        }
    )
    current = msgspec.to_builtins(message)
    rewritten = []
    for row in rows:
        data = {**msgspec.json.decode(row["data"]), "message": current} if row["offset"] == offset else edited
        rewritten.append(await rewrite(name, row["offset"], data))
    return rewritten


async def erase_text(message_ids: list[uuid.UUID]) -> None:
    """Mark messages deleted and drop what they said (text, AI metadata, reactions) from
    their rows, inside the caller's transaction. Only an AI reply's ``stream_id`` stays
    in ``meta``: it is how a reply's second writer learns it was stored already."""
    if not message_ids:
        return
    await Message.raw(
        """UPDATE messages SET deleted_at = coalesce(deleted_at, now()), text = '',
               meta = CASE WHEN meta ? 'stream_id' THEN jsonb_build_object('stream_id', meta->'stream_id')
                           ELSE jsonb_build_object() END
           WHERE id = ANY({}::uuid[])""",
        message_ids,
    )
    await MessageReaction.delete().where(MessageReaction.message.is_in(message_ids))


async def _tombstone(rows: list[MessageRef]) -> tuple[list[Publication], list[Publication]]:
    """Delete the locked messages ``rows``: their text goes (:func:`erase_text`), every
    publication of them becomes a tombstone, and a ``message.deleted`` is appended for
    each one not deleted before. Returns ``(appended, rewritten)`` for
    :func:`_announce_deletions`."""
    await erase_text([row.id for row in rows])
    await forget_mentions(message_ids=[row.id for row in rows])
    appended: list[Publication] = []
    rewritten: list[Publication] = []
    for row in rows:
        rewritten += await rewrite_message_log(row.channel, row.offset)
        if row.deleted_at is None:
            appended.append(await append(row.channel, {"type": "message.deleted", "message_offset": row.offset}))
    return appended, rewritten


async def _announce_deletions(state: AppState, appended: list[Publication], rewritten: list[Publication]) -> None:
    """After the deletions committed: broadcast them, then stop the coach's replies to the
    deleted messages that are still streaming (they may quote them)."""
    await broadcast(state, appended, rewritten=rewritten)
    deleted: dict[str, list[int]] = {}
    for publication in appended:
        deleted.setdefault(publication.channel, []).append(publication.data["message_offset"])
    for channel, offsets in deleted.items():
        await stop_replies_to(state, channel, offsets)


async def _coach_replies(channel: str, offsets: list[int]) -> list[MessageRef]:
    """The coach's stored replies to the messages at ``offsets``, locked (they may quote them)."""
    rows = await Message.raw(
        """SELECT id, channel, "offset", deleted_at FROM messages
           WHERE channel = {} AND reply_to = ANY({}::bigint[]) AND sender_type = 'ai' ORDER BY "offset" FOR UPDATE""",
        channel,
        offsets,
    )
    return msgspec.convert(rows, list[MessageRef])


ERASED_NAME = "Deleted user"


async def erase_authored_messages(state: AppState, user_id: uuid.UUID) -> None:
    """Erasure of an account, inside its transaction and after its name was scrubbed:
    every message it wrote in a lounge becomes a tombstone (no text, attachments, meta
    or reactions; the sender is the scrubbed "Deleted user") in the messages table and in
    every publication of it, a ``message.deleted`` is appended for each one not deleted
    yet (so clients that keep messages locally drop them too), and the mention
    notifications it caused go. The coach's replies to those messages go with them, and
    other people's mentions of the account (``@[Name](id)``) show ``ERASED_NAME``.
    Once the caller's unit of work commits, all of it is broadcast and the coach's
    replies still streaming to those messages stop.

    The author's messages are locked first, in one statement, so a moderator deleting
    one of them meanwhile waits for the erasure instead of deadlocking with it."""
    rows = msgspec.convert(
        await Message.raw(
            """SELECT id, channel, "offset", deleted_at FROM messages WHERE sender = {} AND channel LIKE 'lounge:%'
               ORDER BY channel, "offset" FOR UPDATE""",
            user_id,
        ),
        list[MessageRef],
    )
    await forget_mentions(by=user_id)
    by_channel: dict[str, list[int]] = {}
    for row in rows:
        by_channel.setdefault(row.channel, []).append(row.offset)
    for channel, offsets in by_channel.items():
        rows += await _coach_replies(channel, offsets)
    # Other people's messages that mention the account, locked before any channel row is.
    mentioning = msgspec.convert(
        await Message.raw(
            """SELECT id, channel, "offset", text FROM messages
               WHERE strpos(text, {}) > 0 AND deleted_at IS NULL ORDER BY channel, "offset" FOR UPDATE""",
            f"]({user_id})",
        ),
        list[MentioningMessage],
    )
    erased = {row.id for row in rows}
    appended, rewritten = await _tombstone(rows)
    for mention in (mention for mention in mentioning if mention.id not in erased):
        text = rename_mentions(mention.text, user_id, ERASED_NAME)
        await Message.update({Message.text: text}).where(Message.id == mention.id)
        await reword_mentions(mention.id, text)
        rewritten += await rewrite_message_log(mention.channel, mention.offset)
    await on_commit(partial(_announce_deletions, state, appended, rewritten))


async def do_edit_message(state: AppState, principal: Principal, channel: str, offset: int, text: str) -> MessageOut:
    """The author edits their own message's text; subscribers get ``message.edited``, and
    the earlier versions are rewritten out of the log (:func:`rewrite_message_log`)."""
    access = await channel_access(principal, channel, write=True)
    name = str(access.name)
    text = text.strip()
    if not text:
        raise ValidationFailed("text must not be empty", code="empty_message")
    if len(text) > state.settings.message_max_length:
        raise ValidationFailed(
            f"text is longer than {state.settings.message_max_length} characters", code="message_too_long"
        )
    async with unit_of_work(state.engine):
        row = await _locked_message(name, offset)
        if row.sender != principal.user_id or row.sender_type == SenderType.ai:
            raise Forbidden("only the author may edit a message", code="not_message_author")
        if row.deleted_at is not None:
            raise Conflict("the message was deleted", code="message_deleted")
        edited_at = now()
        await Message.update({Message.text: text, Message.edited_at: edited_at}).where(Message.id == row.id)
        rewritten = await rewrite_message_log(name, offset)
        publication = await append(
            name, {"type": "message.edited", "message_offset": offset, "text": text, "edited_at": edited_at.isoformat()}
        )
        await reword_mentions(row.id, text)
        await on_commit(partial(broadcast, state, [publication], rewritten=rewritten))
    return await get_message(name, offset)


async def do_delete_message(state: AppState, principal: Principal, channel: str, offset: int) -> None:
    """Soft-delete: by the author, or by the lounge's staff; subscribers get ``message.deleted``.

    The row keeps its offset but loses its text, and every publication of the message
    becomes a tombstone (:func:`rewrite_message_log`); so do the coach's replies to it,
    which may quote it."""
    access = await channel_access(principal, channel, write=False)
    name = str(access.name)
    async with unit_of_work(state.engine):
        row = await _locked_message(name, offset)
        is_author = row.sender == principal.user_id and row.sender_type != SenderType.ai
        is_thread_owner = access.thread is not None
        if not (is_author or is_thread_owner or access.is_moderator):
            raise Forbidden("only the author or the lounge's staff may delete a message", code="not_message_author")
        if row.deleted_at is not None:
            return
        deleted = [MessageRef(id=row.id, channel=name, offset=offset, deleted_at=None)]
        appended, rewritten = await _tombstone(deleted + await _coach_replies(name, [offset]))
        await on_commit(partial(_announce_deletions, state, appended, rewritten))


async def do_react(
    state: AppState, principal: Principal, channel: str, offset: int, emoji: str, *, add: bool
) -> dict[str, int]:
    """Add or remove the caller's ``emoji`` on a message; returns the message's reaction counts."""
    access = await channel_access(principal, channel, write=True)
    name = str(access.name)
    async with unit_of_work(state.engine):
        row = await _locked_message(name, offset)
        if row.deleted_at is not None:
            raise Conflict("the message was deleted", code="message_deleted")
        if add:
            changed = await MessageReaction.raw(
                """INSERT INTO message_reactions (id, message, "user", emoji, created_at) VALUES ({}, {}, {}, {}, now())
                   ON CONFLICT (message, "user", emoji) DO NOTHING RETURNING id""",
                uuid.uuid4(),
                row.id,
                principal.user_id,
                emoji,
            )
        else:
            changed = (
                await MessageReaction.delete()
                .where(
                    MessageReaction.message == row.id,
                    MessageReaction.user == principal.user_id,
                    MessageReaction.emoji == emoji,
                )
                .returning(MessageReaction.id)
            )
        counts = await _reaction_counts(row.id)
        if changed:
            publication = await append(
                name,
                {
                    "type": "reaction",
                    "message_offset": offset,
                    "emoji": emoji,
                    "user_id": str(principal.user_id),
                    "added": add,
                    "count": counts.get(emoji, 0),
                },
            )
            await on_commit(partial(broadcast, state, [publication]))
    return counts


async def _reaction_counts(message_id: uuid.UUID) -> dict[str, int]:
    rows = await MessageReaction.raw(
        "SELECT emoji, count(*) AS n FROM message_reactions WHERE message = {} GROUP BY emoji ORDER BY emoji",
        message_id,
    )
    return {r["emoji"]: r["n"] for r in rows}


async def do_mark_read(state: AppState, principal: Principal, channel: str, offset: int) -> ReadOut:
    """Move the caller's read position forward (never back); returns it with the unread count."""
    access = await channel_access(principal, channel, write=False)
    name = str(access.name)
    channel_row = await Channel.select(Channel.last_offset).where(Channel.name == name).first()
    assert channel_row is not None  # the channel row exists: channel_access found it
    offset = min(offset, channel_row["last_offset"])
    if access.lounge is not None:
        if access.lounge.membership is None:
            raise Forbidden("only members keep a read position", code="not_a_member")
        rows = await LoungeMembership.raw(
            """UPDATE lounge_memberships SET last_read_offset = greatest(last_read_offset, {}), updated_at = now()
               WHERE id = {} RETURNING last_read_offset""",
            offset,
            access.lounge.membership.id,
        )
    else:
        assert access.thread is not None  # a channel is a lounge's or a thread's
        rows = await ChatThread.raw(
            "UPDATE chat_threads SET last_read_offset = greatest(last_read_offset, {}) WHERE id = {} RETURNING last_read_offset",
            offset,
            access.thread.id,
        )
    position = rows[0]["last_read_offset"]
    return ReadOut(
        channel=name, last_read_offset=position, unread=await unread_count(name, principal.user_id, position)
    )


async def unread_count(channel: str, user_id: uuid.UUID, after: int) -> int:
    rows = await Message.raw(
        """SELECT count(*) AS n FROM messages WHERE channel = {} AND "offset" > {}
           AND deleted_at IS NULL AND sender IS DISTINCT FROM {}""",
        channel,
        after,
        user_id,
    )
    return rows[0]["n"]
