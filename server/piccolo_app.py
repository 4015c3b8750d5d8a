"""The Piccolo app holding every domain table and the migrations that build them."""

from __future__ import annotations

from pathlib import Path

from piccolo.conf.apps import AppConfig
from piccolo.table import Table

from server.accounts.tables import (
    ActionToken,
    OAuthAccount,
    RefreshToken,
    SecurityEvent,
    User,
    UserSession,
)
from server.admin.tables import AdminAuditLog
from server.ai.tables import AIUsage
from server.billing.tables import (
    BillingCustomer,
    Payment,
    Plan,
    StripeEvent,
    Subscription,
)
from server.capsules.tables import CapsuleAttachment, TimeCapsule
from server.chat.tables import ChatThread, Message, MessageAttachment, MessageReaction
from server.cms.tables import FAQ, StaticPage
from server.compliance.tables import ComplianceRequest
from server.files.tables import File
from server.knowledge.tables import KnowledgeChunk
from server.lounges.tables import Lounge, LoungeMembership
from server.mentors.tables import Category, Mentor, MentorCategory
from server.notes.tables import Note
from server.notifications.tables import Notification
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
