"""What a push says, and how it is laid out for APNs and for FCM (docs/push.md, "Payloads").

A :class:`Push` is built once per recipient: the alert's title and body (generic texts when
the user asked for private previews: no message text, no names), the ids the app needs to
open the right screen (``data``, never text), the collapse id (one per channel: a newer push
of the channel replaces the older on the phone) and the badge (the user's unread
notifications).
"""

from __future__ import annotations

from typing import Any

import msgspec

TITLE_CHARS = 120
BODY_CHARS = 180
# The ids a notification's data may carry into a push (its text-bearing fields never do).
DATA_KEYS = ("lounge_id", "thread_id", "channel", "offset", "message_id", "capsule_id", "mentor_id", "request_id", "by")

# Private previews: what each kind says instead (no message text, no names, no titles).
PRIVATE_TEXTS: dict[str, tuple[str, str]] = {
    "lounge.message": ("New message", "Open Lounges to read it."),
    "lounge.mention": ("You were mentioned", "Open Lounges to read it."),
    "thread.coach_reply": ("Your coach replied", "Open Lounges to read it."),
    "capsule.unlocked": ("A time capsule unlocked", ""),
    "lounge.invite": ("You are invited to a lounge", ""),
    "lounge.request_approved": ("Your request to join was approved", ""),
    "lounge.request_declined": ("Your request to join was declined", ""),
}
PRIVATE_DEFAULT = ("New notification", "Open Lounges to see it.")


class Push(msgspec.Struct, frozen=True):
    """One push to one user's devices."""

    kind: str
    title: str
    body: str
    collapse_id: str
    data: dict[str, Any]
    badge: int = 0
    private: bool = False
    notification_id: str | None = None


def clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build(
    kind: str,
    *,
    title: str,
    body: str,
    data: dict[str, Any],
    collapse_id: str,
    private: bool,
    notification_id: str | None = None,
) -> Push:
    """The push for one recipient; with ``private`` the texts are the kind's generic ones."""
    if private:
        title, body = PRIVATE_TEXTS.get(kind, PRIVATE_DEFAULT)
    ids = {key: data[key] for key in DATA_KEYS if data.get(key) is not None}
    return Push(
        kind=kind,
        title=clip(title, TITLE_CHARS),
        body=clip(body, BODY_CHARS),
        collapse_id=collapse_id[:64],
        data=ids,
        private=private,
        notification_id=notification_id,
    )


def custom_data(push: Push) -> dict[str, Any]:
    """The app's part of a payload: the kind and the ids (and the notification's id)."""
    data: dict[str, Any] = {"kind": push.kind, **push.data}
    if push.notification_id is not None:
        data["notification_id"] = push.notification_id
    return data


def apns_payload(push: Push) -> dict[str, Any]:
    """The APNs JSON body: ``aps`` (alert, badge, sound, thread-id) and ``lounges`` (the ids)."""
    alert = {"title": push.title, "body": push.body} if push.body else {"title": push.title}
    return {
        "aps": {"alert": alert, "badge": push.badge, "sound": "default", "thread-id": push.collapse_id},
        "lounges": custom_data(push),
    }


def fcm_message(push: Push, token: str) -> dict[str, Any]:
    """The FCM HTTP v1 ``message``: notification, string-only data, Android collapse key and tag,
    and for iOS apps on FCM the same APNs collapse id and badge."""
    notification = {"title": push.title, "body": push.body} if push.body else {"title": push.title}
    return {
        "token": token,
        "notification": notification,
        "data": {key: str(value) for key, value in custom_data(push).items()},
        "android": {
            "collapse_key": push.collapse_id,
            "priority": "HIGH",
            "notification": {"tag": push.collapse_id, "notification_count": push.badge},
        },
        "apns": {
            "headers": {"apns-collapse-id": push.collapse_id, "apns-push-type": "alert"},
            "payload": {"aps": {"badge": push.badge, "sound": "default", "thread-id": push.collapse_id}},
        },
    }
