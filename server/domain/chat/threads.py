"""Threads: a user's one-to-one conversations with the AI coach. Only the owner sees them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec

from server.domain.access.policy import check_can_read_messages, lounge_context
from server.domain.accounts.services import Principal
from server.domain.chat.schemas import ThreadCreate, ThreadOut, ThreadPage, ThreadUpdate
from server.domain.tables.chat import ChatThread, Message
from server.foundation.errors import NotFound
from server.foundation.pagination import keyset_page
from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work
from server.streams.broker import forget_channels
from server.streams.channels import create_channel, delete_channel

DEFAULT_TITLE = "New conversation"

_THREAD_SELECT = """
SELECT t.*, c.last_offset FROM chat_threads t JOIN channels c ON c.name = t.channel
"""


def thread_out(row: dict[str, Any]) -> ThreadOut:
    return ThreadOut(
        id=row["id"],
        channel=row["channel"],
        title=row["title"],
        lounge_id=row["lounge"],
        archived=row["archived_at"] is not None,
        last_read_offset=row["last_read_offset"],
        last_offset=row["last_offset"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def _own_thread(principal: Principal, thread_id: uuid.UUID) -> ThreadOut:
    rows = await ChatThread.raw(_THREAD_SELECT + ' WHERE t.id = {} AND t."user" = {}', thread_id, principal.user_id)
    if not rows:
        raise NotFound("no such thread", code="thread_not_found")
    return thread_out(rows[0])


async def do_create_thread(state: AppState, principal: Principal, data: ThreadCreate) -> ThreadOut:
    if data.lounge_id is not None:
        check_can_read_messages(await lounge_context(principal, data.lounge_id))
    thread_id = uuid.uuid4()
    channel = f"thread:{thread_id}"
    async with unit_of_work(state.engine):
        await create_channel(channel)
        await ChatThread.insert(
            ChatThread(
                id=thread_id,
                user=principal.user_id,
                title=(data.title or DEFAULT_TITLE).strip() or DEFAULT_TITLE,
                channel=channel,
                lounge=data.lounge_id,
            )
        )
    return await _own_thread(principal, thread_id)


async def list_threads(principal: Principal, *, archived: bool, limit: int, cursor: str | None = None) -> ThreadPage:
    """The caller's threads, most recently updated first."""
    condition = "archived_at IS NOT NULL" if archived else "archived_at IS NULL"
    rows, next_cursor = await keyset_page(
        _THREAD_SELECT + f' WHERE t."user" = {{}} AND t.{condition}',
        [principal.user_id],
        moment="t.updated_at",
        row_id="t.id",
        cursor=cursor,
        limit=limit,
    )
    return ThreadPage(items=[thread_out(r) for r in rows], next_cursor=next_cursor)


async def get_thread(principal: Principal, thread_id: uuid.UUID) -> ThreadOut:
    return await _own_thread(principal, thread_id)


async def do_update_thread(principal: Principal, thread_id: uuid.UUID, data: ThreadUpdate) -> ThreadOut:
    await _own_thread(principal, thread_id)
    values: dict[Any, Any] = {}
    if data.title is not msgspec.UNSET:
        values[ChatThread.title] = data.title.strip() or DEFAULT_TITLE
    if data.archived is not msgspec.UNSET:
        values[ChatThread.archived_at] = datetime.now(UTC) if data.archived else None
    if values:
        await ChatThread.update(values).where(ChatThread.id == thread_id)
    return await get_thread(principal, thread_id)


async def do_delete_thread(state: AppState, principal: Principal, thread_id: uuid.UUID) -> None:
    """Delete the thread with its messages, its channel log and the log's Redis cache."""
    thread = await _own_thread(principal, thread_id)
    async with unit_of_work(state.engine):
        await Message.delete().where(Message.channel == thread.channel)
        await ChatThread.delete().where(ChatThread.id == thread_id)
        await delete_channel(thread.channel)
        await on_commit(partial(forget_channels, state, [thread.channel]))
