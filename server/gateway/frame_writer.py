"""Writing whole WebSocket frames straight to the socket, below ASGI.

A broadcast to a large room is one WebSocket frame written to many sockets. Through
ASGI each write is a ``websocket.send`` message: the bytes are decoded to ``str``,
then uvicorn encodes them again, builds and serialises a websockets ``Frame`` and
only then calls ``transport.write``; the Python part of that costs about as much as
the ``send(2)`` it leads to (profiled in docs/benchmarks.md). The gateway instead
builds the frame's bytes once per broadcast and encoding (:func:`text_frame`, :func:`binary_frame`) and hands them to a
:class:`FrameWriter`, which writes them to each socket's transport synchronously.

The writer is uvicorn's own sans-I/O WebSocket protocol plus that one method
(:mod:`server.gateway.uvicorn_writer`), offered to the application in the ASGI
scope's ``extensions`` under :data:`EXTENSION`. ``python -m server serve`` runs
uvicorn with it; under any other server (or ``--ws-protocol uvicorn``) the extension
is absent and the gateway sends through ASGI as usual. That protocol builds on
uvicorn's private API: when the installed uvicorn no longer has what it uses, the
server logs one warning and runs uvicorn's stock protocol instead, so an upgrade
costs speed, not correctness. This module is the part the protocol core uses, free
of any server.

Frames written here are complete, unmasked, unfragmented text or binary frames, so they
never interleave with a frame uvicorn writes; they are written only while the
connection is open and before a close frame was sent or received. With
permessage-deflate negotiated they are simply sent uncompressed (RSV1 clear), which
RFC 7692 allows (the server disables the extension anyway).
"""

from __future__ import annotations

import struct
from typing import Protocol, runtime_checkable

EXTENSION = "lounges.frame_writer"

_FIN_TEXT = 0x81
_FIN_BINARY = 0x82


def text_frame(payload: bytes) -> bytes:
    """``payload`` (UTF-8) as one complete server-to-client text frame (FIN, unmasked).

    Byte for byte what ``websockets.frames.Frame(Opcode.TEXT, payload).serialize(mask=False,
    extensions=[])`` writes (tests/test_frame_writer.py), without a ``Frame`` object and its
    checks for every socket a merged write goes to."""
    return _frame(_FIN_TEXT, payload)


def binary_frame(payload: bytes) -> bytes:
    """``payload`` as one complete server-to-client binary frame (the Protobuf encoding's)."""
    return _frame(_FIN_BINARY, payload)


def _frame(first_byte: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        return bytes((first_byte, length)) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", first_byte, 126, length) + payload
    return struct.pack("!BBQ", first_byte, 127, length) + payload


@runtime_checkable
class FrameWriter(Protocol):
    """What a socket's scope offers under :data:`EXTENSION`."""

    def write_frame(self, frame: bytes) -> int:
        """Write a frame built by :func:`text_frame` or :func:`binary_frame`. Returns how many bytes now wait in
        the transport's buffer (what the peer has not taken yet), or -1 when the socket
        no longer takes data frames (closing, closed, or never accepted)."""
        ...
