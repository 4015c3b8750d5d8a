"""Anthropic Messages API, streamed, through the official SDK.

The passages go into the top-level ``system`` text as numbered sources. Usage
comes from ``message_start`` (input) and ``message_delta`` (cumulative output).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anthropic

from server.domain.llm.providers import (
    BAD_REQUEST,
    PROVIDER_UNAVAILABLE,
    ChatTurn,
    Prompt,
    ProviderError,
    StreamEvent,
    TextDelta,
    Usage,
    code_for_status,
    estimate_input_tokens,
    estimate_text_tokens,
    failure,
    system_text,
)
from server.domain.llm.sdk_provider import SDKProvider

if TYPE_CHECKING:
    from server.foundation.settings import Settings

DEFAULT_BASE_URL = "https://api.anthropic.com"


def error_code(exc: BaseException) -> tuple[str, int | None]:
    """``(code, HTTP status)`` for an exception raised by the Anthropic SDK (or while reading its stream)."""
    if isinstance(exc, ProviderError):
        return exc.code, exc.status
    if isinstance(exc, anthropic.APIStatusError):
        # An SSE ``error`` event mid-stream arrives as a status error with the
        # stream's status (200): then the body's error type decides.
        status = exc.status_code if exc.status_code >= 400 else None
        return code_for_status(status, exc.body), status
    # APIConnectionError, APITimeoutError, a connection dropped mid-body, a malformed event, ...
    return PROVIDER_UNAVAILABLE, None


def anthropic_messages(turns: list[ChatTurn]) -> list[dict[str, str]]:
    """The turns as Messages API messages: alternating roles (consecutive turns of one
    role are joined) and opening with the user (leading assistant turns are dropped)."""
    messages: list[dict[str, str]] = []
    for turn in turns:
        if not turn.content.strip():
            continue
        if not messages and turn.role == "assistant":
            continue
        if messages and messages[-1]["role"] == turn.role:
            messages[-1]["content"] += "\n\n" + turn.content
        else:
            messages.append({"role": turn.role, "content": turn.content})
    return messages


class AnthropicProvider(SDKProvider):
    """Streams ``messages.create(..., stream=True)`` as :class:`TextDelta` then one :class:`Usage`."""

    client_class = anthropic.AsyncAnthropic

    def __init__(
        self, *, api_key: str, model: str = "claude-3-5-haiku-latest", base_url: str = DEFAULT_BASE_URL, **options: Any
    ) -> None:
        super().__init__(api_key=api_key, model=model, base_url=base_url, **{"name": "anthropic", **options})

    @classmethod
    def from_settings(cls, settings: Settings) -> AnthropicProvider:
        return cls(
            api_key=settings.anthropic_api_key or "",
            model=settings.anthropic_model,
            base_url=settings.anthropic_base_url,
            timeout=settings.ai_timeout_seconds,
            max_retries=settings.ai_max_retries,
            max_output_tokens=settings.ai_max_output_tokens,
        )

    async def stream(self, prompt: Prompt) -> AsyncIterator[StreamEvent]:
        parts: list[str] = []
        input_tokens: int | None = None
        output_tokens: int | None = None

        def fail(exc: BaseException) -> ProviderError:
            code, status = error_code(exc)
            error = failure(self, exc, code, status=status, started=bool(parts), text="".join(parts), prompt=prompt)
            if error.usage is not None and input_tokens is not None:  # the real input count is known
                error.usage = Usage(input_tokens, max(output_tokens or 0, error.usage.output_tokens))
            return error

        messages = anthropic_messages(prompt.turns)
        if not messages:
            raise fail(ProviderError("the prompt has no user turn", code=BAD_REQUEST))
        options: dict[str, Any] = {
            "model": self.model,
            "max_tokens": min(prompt.max_output_tokens, self.max_output_tokens),
            "messages": messages,
            "stream": True,
        }
        system = system_text(prompt)
        if system:
            options["system"] = system
        try:
            stream = await self.client().messages.create(**options)
        except Exception as exc:
            raise fail(exc) from exc

        stopped = False
        try:
            async for event in stream:
                if event.type == "message_start":
                    usage = event.message.usage
                    input_tokens = _input_tokens(usage) if usage is not None else None
                    output_tokens = usage.output_tokens if usage is not None else None
                elif event.type == "content_block_delta":
                    if event.delta.type == "text_delta" and event.delta.text:
                        parts.append(event.delta.text)
                        yield TextDelta(event.delta.text)
                elif event.type == "message_delta":
                    if event.usage is not None:
                        output_tokens = event.usage.output_tokens
                        if event.usage.input_tokens is not None:  # newer API versions repeat it, cumulative
                            input_tokens = max(input_tokens or 0, _input_tokens(event.usage))
                elif event.type == "message_stop":
                    stopped = True
        except Exception as exc:
            raise fail(exc) from exc
        finally:
            await stream.close()

        if not stopped:  # the body ended cleanly without message_stop: cut off
            raise fail(ProviderError("the stream ended before message_stop", code=PROVIDER_UNAVAILABLE))
        text = "".join(parts)
        yield Usage(
            # Neither reported (a non-conforming server): the four-characters-per-token estimate.
            input_tokens=input_tokens if input_tokens is not None else estimate_input_tokens(prompt),
            output_tokens=output_tokens if output_tokens is not None else estimate_text_tokens(text),
        )


def _input_tokens(usage: Any) -> int:
    """Input tokens billed: the uncached ones plus those written to and read from the prompt cache."""
    return (
        (usage.input_tokens or 0)
        + (getattr(usage, "cache_creation_input_tokens", None) or 0)
        + (getattr(usage, "cache_read_input_tokens", None) or 0)
    )
