"""The gateway's own WebSocket framing matches what websockets would write, at every length
boundary; and a uvicorn without the private API the frame writer uses still serves."""

from __future__ import annotations

import tempfile
import uuid

import pytest
from litestar import Litestar
from websockets.frames import Frame, Opcode

from server.foundation.settings import Settings
from server.gateway.frame_writer import text_frame
from server.gateway.uvicorn_writer import missing_private_api
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.sdk import sdk_client, subscription


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_is_byte_for_byte_websockets_own(length: int) -> None:
    payload = b"x" * length
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected


# The CLI as ``python -m server`` runs it, after making uvicorn's protocol look as if an
# upgrade had taken away one of the private attributes the frame writer uses.
UPGRADED_UVICORN = (
    "-c",
    "import server.gateway.uvicorn_writer as writer; "
    "writer.PRIVATE_API = (*writer.PRIVATE_API, 'attribute_an_upgrade_removed'); "
    "from server.__main__ import main; main()",
)


async def test_without_the_private_api_the_node_serves_through_asgi(
    app: Litestar, settings: Settings, community: Community
) -> None:
    """A uvicorn that lacks what the frame writer uses costs speed, not correctness: one
    warning at start-up, then uvicorn's stock protocol serves the full round trip."""
    mentor = await community.mentor("fallback-mentor@example.com")
    lounge = await community.lounge(mentor)
    member = await community.user("fallback-member@example.com")
    await community.join(member, lounge)
    with tempfile.TemporaryFile() as log:
        node = await WebNode(settings, launcher=UPGRADED_UVICORN, stderr=log).start()
        alice, _ = sdk_client(node.ws_url, mentor.access_token)
        bob, _ = sdk_client(node.ws_url, member.access_token)
        try:
            await alice.connect()
            await bob.connect()
            sub_a, seen_a = subscription(alice, lounge["channel"])
            sub_b, _ = subscription(bob, lounge["channel"])
            await sub_a.subscribe()
            await sub_b.subscribe()
            await sub_a.ready()
            await sub_b.ready()
            await sub_b.publish({"text": "sent through ASGI", "client_id": str(uuid.uuid4())})
            await seen_a.wait_for(lambda r: len(r.stored) == 1)
            assert seen_a.publications[0][1]["message"]["text"] == "sent through ASGI"
        finally:
            await alice.disconnect()
            await bob.disconnect()
            await node.stop()
        log.seek(0)
        warnings = [line for line in log.read().decode().splitlines() if "lacks what the frame writer uses" in line]
    assert len(warnings) == 1, warnings
    assert "attribute_an_upgrade_removed" in warnings[0]


def test_the_installed_uvicorn_has_what_the_frame_writer_uses() -> None:
    assert missing_private_api() == []
