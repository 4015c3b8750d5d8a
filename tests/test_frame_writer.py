"""The gateway's own WebSocket framing matches what websockets would write, at every length boundary."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from server.gateway.frame_writer import text_frame


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_is_byte_for_byte_websockets_own(length: int) -> None:
    payload = b"x" * length
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected
