"""Links sent by mail: to the app when ``APP_LINK_BASE`` is set, else to this server.

``PUBLIC_BASE_URL`` names the server as clients reach it; unset, it follows
``HOST`` and ``PORT`` (a wildcard host becomes 127.0.0.1), so a development
server on another port still mails links that work.
"""

from __future__ import annotations

from urllib.parse import urlencode

from server.foundation.settings import Settings

_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def public_base_url(settings: Settings) -> str:
    """This server's base URL as clients reach it (no trailing slash)."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    host = "127.0.0.1" if settings.host in _WILDCARD_HOSTS else settings.host
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def action_link(settings: Settings, page: str, **query: str) -> str:
    """The link a mail carries for ``page`` (``verify-email``, ``reset-password``):
    the app's when ``APP_LINK_BASE`` is set, else this server's page."""
    base = settings.app_link_base.rstrip("/") if settings.app_link_base else public_base_url(settings)
    return f"{base}/{page}?{urlencode(query)}" if query else f"{base}/{page}"
