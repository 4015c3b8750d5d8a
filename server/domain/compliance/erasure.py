"""Erasure of a deleted account (right to erasure), recorded on its compliance request;
run by the arq job ``erase_user`` (``workers/accounts.py``)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from functools import partial

from server.domain.chat.messages import ERASED_NAME, erase_authored_messages
from server.domain.compliance.services import erase_owned_data, purge_erased_files
from server.domain.tables.accounts import ActionToken, OAuthAccount, SecurityEvent, User, UserSession
from server.domain.tables.capsules import TimeCapsule
from server.domain.tables.chat import ChatThread, Message
from server.domain.tables.compliance import ComplianceRequest
from server.domain.tables.notes import Note
from server.domain.tables.notifications import Notification
from server.domain.tables.push import PushDevice, PushLog
from server.foundation.state import AppState
from server.foundation.unit_of_work import on_commit, unit_of_work
from server.streams.broker import forget_channels
from server.streams.channels import delete_channel

log = logging.getLogger("lounges.erasure")


async def erase_account(state: AppState, user_id: str, request_id: str) -> str:
    """Scrub the account row and delete what only its owner had (idempotent).

    The account's lounge messages become tombstones at their offsets (text,
    attachments and reactions gone, author "Deleted user"), in the channel log and
    in every cache of it too (:func:`server.domain.chat.messages.erase_authored_messages`);
    one-to-one AI threads (messages and channel logs), notes, capsules, notifications,
    push devices and the push log, sessions, identities and the security log go; so do the user's files (rows
    and objects) and knowledge chunks, while payments stay, anonymised
    (:mod:`server.domain.compliance.services`).
    """
    uid, rid = uuid.UUID(user_id), uuid.UUID(request_id)
    async with unit_of_work(state.engine):
        await ComplianceRequest.update({ComplianceRequest.status: "processing"}).where(
            ComplianceRequest.id == rid, ComplianceRequest.status == "pending"
        )
        erased_files = await erase_owned_data(uid)
        thread_channels = [
            t["channel"] for t in await ChatThread.select(ChatThread.channel).where(ChatThread.user == uid)
        ]
        if thread_channels:
            await Message.delete().where(Message.channel.is_in(thread_channels))
        for channel in thread_channels:
            await delete_channel(channel)
        await on_commit(partial(forget_channels, state, thread_channels))
        for table, column in (
            (ChatThread, ChatThread.user),
            (Note, Note.user),
            (TimeCapsule, TimeCapsule.user),
            (Notification, Notification.user),
            (PushLog, PushLog.user),
            (PushDevice, PushDevice.user),
            (OAuthAccount, OAuthAccount.user),
            (ActionToken, ActionToken.user),
            (SecurityEvent, SecurityEvent.user),
            (UserSession, UserSession.user),
        ):
            await table.delete().where(column == uid)
        await User.update(
            {
                User.email: f"erased-{uid.hex}@erased.invalid",
                User.full_name: ERASED_NAME,
                User.password_hash: None,
                User.avatar_file_id: None,
                User.notification_prefs: {},
                User.is_active: False,
            }
        ).where(User.id == uid)
        await erase_authored_messages(state, uid)
        await ComplianceRequest.update(
            {ComplianceRequest.status: "completed", ComplianceRequest.completed_at: datetime.now(UTC)}
        ).where(ComplianceRequest.id == rid)
        await on_commit(partial(purge_erased_files, state, erased_files))
    log.info("account erased", extra={"user_id": user_id, "compliance_request_id": request_id})
    return "erased"
