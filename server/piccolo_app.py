"""The Piccolo app holding every domain table and the migrations that build them."""

from __future__ import annotations

from pathlib import Path

from piccolo.conf.apps import AppConfig
from piccolo.table import Table

from server.domain.tables.accounts import (
    ActionToken,
    OAuthAccount,
    RefreshToken,
    SecurityEvent,
    User,
    UserSession,
)
from server.domain.tables.admin import AdminAuditLog
from server.domain.tables.ai import AIUsage
from server.domain.tables.billing import (
    BillingCustomer,
    Payment,
    Plan,
    StripeEvent,
    Subscription,
)
from server.domain.tables.capsules import CapsuleAttachment, TimeCapsule
from server.domain.tables.chat import ChatThread, Message, MessageAttachment, MessageReaction
from server.domain.tables.cms import FAQ, StaticPage
from server.domain.tables.compliance import ComplianceRequest
from server.domain.tables.files import File
from server.domain.tables.knowledge import KnowledgeChunk
from server.domain.tables.lounges import Lounge, LoungeMembership
from server.domain.tables.mentors import Category, Mentor, MentorCategory
from server.domain.tables.notes import Note
from server.domain.tables.notifications import Notification
from server.domain.tables.push import PushDevice, PushLog
from server.streams.tables import Channel, ChannelPublication

MIGRATIONS_FOLDER = Path(__file__).resolve().parent.parent / "piccolo_migrations"

# Every table, each after the tables its foreign keys reference.
ALL_TABLES: list[type[Table]] = [
    User,
    OAuthAccount,
    UserSession,
    RefreshToken,
    ActionToken,
    SecurityEvent,
    Category,
    Mentor,
    MentorCategory,
    Channel,
    ChannelPublication,
    Lounge,
    LoungeMembership,
    File,
    ChatThread,
    Message,
    MessageReaction,
    MessageAttachment,
    Note,
    KnowledgeChunk,
    TimeCapsule,
    CapsuleAttachment,
    Plan,
    BillingCustomer,
    Subscription,
    Payment,
    StripeEvent,
    AIUsage,
    Notification,
    PushDevice,
    PushLog,
    StaticPage,
    FAQ,
    ComplianceRequest,
    AdminAuditLog,
]

APP_CONFIG = AppConfig(
    app_name="lounges",
    migrations_folder_path=str(MIGRATIONS_FOLDER),
    table_classes=ALL_TABLES,
)
