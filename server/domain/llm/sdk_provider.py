"""What the SDK-backed providers share: options, one SDK client per event loop, closing."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, ClassVar


class SDKProvider:
    """Base of :class:`OpenAIProvider` and :class:`AnthropicProvider`.

    Subclasses set ``client_class`` (the SDK's async client) and implement ``stream``.
    """

    client_class: ClassVar[type[Any]]

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str,
        name: str,
        timeout: float = 30.0,
        max_retries: int = 1,
        max_output_tokens: int = 800,
    ) -> None:
        self.name = name
        self.model = model
        self.base_url = base_url
        self.max_output_tokens = max_output_tokens
        self._options: dict[str, Any] = {
            "api_key": api_key,
            "base_url": base_url,
            "timeout": timeout,
            "max_retries": max_retries,
        }
        # One client (one connection pool) per event loop: pools cannot cross loops.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    def client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = self.client_class(**self._options)
        return client

    async def aclose(self) -> None:
        """Close this event loop's client (a later ``stream`` opens a new one)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()
