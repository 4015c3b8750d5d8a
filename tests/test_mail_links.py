"""Links in mail reach something that works: the app when it claims them, else this server's pages."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from server.foundation.links import action_link, public_base_url
from server.foundation.settings import Settings, SettingsError, load_settings


def test_links_follow_the_port_unless_a_public_url_is_set() -> None:
    assert public_base_url(Settings(port=9123)) == "http://127.0.0.1:9123"
    assert public_base_url(Settings(host="0.0.0.0", port=8080)) == "http://127.0.0.1:8080"
    assert public_base_url(Settings(host="::1", port=8080)) == "http://[::1]:8080"
    assert public_base_url(Settings(public_base_url="https://api.example.com/", port=9123)) == "https://api.example.com"
    assert (
        action_link(Settings(port=9123), "verify-email", token="t-1") == "http://127.0.0.1:9123/verify-email?token=t-1"
    )


def test_the_app_claims_the_links_when_it_has_a_link_base() -> None:
    settings = msgspec.structs.replace(Settings(), app_link_base="lounges://app/")
    assert action_link(settings, "reset-password", token="a b&c") == "lounges://app/reset-password?token=a+b%26c"
    with pytest.raises(SettingsError, match="APP_LINK_BASE"):
        load_settings({"APP_LINK_BASE": "not a url"})


async def test_a_link_page_refuses_a_bad_token_and_keeps_the_token_out_of_referrers(client: httpx.AsyncClient) -> None:
    for page in ("/verify-email", "/reset-password"):
        missing = await client.get(page)
        assert missing.status_code == 422 and "This link is invalid" in missing.text
        hostile = '"><script>alert(1)</script>'
        shown = await client.get(page, params={"token": hostile})
        assert (
            shown.status_code == 200 and "<script>alert" not in shown.text and "&quot;&gt;&lt;script&gt;" in shown.text
        )
        assert shown.headers["referrer-policy"] == "no-referrer" and shown.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in shown.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in shown.headers["content-security-policy"]
    spent = await client.post("/verify-email", data={"token": "x" * 32})
    assert spent.status_code == 422 and "This link is invalid, has expired or was already used" in spent.text
    differ = await client.post("/reset-password", data={"token": "x" * 32, "password": "a" * 12, "confirm": "b" * 12})
    assert differ.status_code == 422 and "The two passwords differ" in differ.text
    unknown = await client.post("/reset-password", data={"token": "x" * 32, "password": "p" * 12, "confirm": "p" * 12})
    assert unknown.status_code == 422 and "This link is invalid" in unknown.text
