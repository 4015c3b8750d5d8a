"""The Piccolo app holding every domain table and the migrations that build them."""

from __future__ import annotations

from pathlib import Path

from piccolo.conf.apps import AppConfig
from piccolo.table import Table

from server.domain.accounts.tables import (
    ActionToken,
    OAuthAccount,
    RefreshToken,
    SecurityEvent,
    User,
    UserSession,
)
from server.domain.admin.tables import AdminAuditLog
from server.domain.ai.tables import AIUsage
from server.domain.billing.tables import (
    BillingCustomer,
    Payment,
    Plan,
    StripeEvent,
    Subscription,
)
from server.domain.capsules.tables import CapsuleAttachment, TimeCapsule
from server.domain.chat.tables import ChatThread, Message, MessageAttachment, MessageReaction
from server.domain.cms.tables import FAQ, StaticPage
from server.domain.compliance.tables import ComplianceRequest
from server.domain.files.tables import File
from server.domain.knowledge.tables import KnowledgeChunk
from server.domain.lounges.tables import Lounge, LoungeMembership
from server.domain.mentors.tables import Category, Mentor, MentorCategory
from server.domain.notes.tables import Note
from server.domain.notifications.tables import Notification
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
