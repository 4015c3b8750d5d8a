"""OpenAI Chat Completions, streamed, through the official SDK.

Any OpenAI-compatible server (Ollama, vLLM, llama.cpp, ...) works through
``base_url``. The passages go into the system message as numbered sources.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import openai

from server.domain.llm.providers import (
    PROVIDER_UNAVAILABLE,
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

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def error_code(exc: BaseException) -> tuple[str, int | None]:
    """``(code, HTTP status)`` for an exception raised by the OpenAI SDK (or while reading its stream)."""
    if isinstance(exc, ProviderError):
        return exc.code, exc.status
    if isinstance(exc, openai.APIStatusError):  # RateLimitError, AuthenticationError, InternalServerError, ...
        return code_for_status(exc.status_code, exc.body), exc.status_code
    if isinstance(exc, openai.APIError) and exc.body is not None:  # an error object sent inside the stream
        return code_for_status(None, {"error": exc.body}), None
    # APIConnectionError, APITimeoutError, APIResponseValidationError, a malformed chunk, ...
    return PROVIDER_UNAVAILABLE, None


class OpenAIProvider(SDKProvider):
    """Streams ``chat.completions.create(..., stream=True)`` as :class:`TextDelta` then one :class:`Usage`."""

    client_class = openai.AsyncOpenAI

    def __init__(
        self, *, api_key: str, model: str = "gpt-4o-mini", base_url: str = DEFAULT_BASE_URL, **options: Any
    ) -> None:
        super().__init__(api_key=api_key, model=model, base_url=base_url, **{"name": "openai", **options})

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIProvider:
        return cls(
            api_key=settings.openai_api_key or "",
            model=settings.openai_model,
            base_url=settings.openai_base_url,
            timeout=settings.ai_timeout_seconds,
            max_retries=settings.ai_max_retries,
            max_output_tokens=settings.ai_max_output_tokens,
        )

    def messages(self, prompt: Prompt) -> list[dict[str, str]]:
        system = system_text(prompt)
        turns = [{"role": turn.role, "content": turn.content} for turn in prompt.turns]
        return [{"role": "system", "content": system}, *turns] if system else turns

    async def stream(self, prompt: Prompt) -> AsyncIterator[StreamEvent]:
        parts: list[str] = []

        def fail(exc: BaseException) -> ProviderError:
            code, status = error_code(exc)
            return failure(self, exc, code, status=status, started=bool(parts), text="".join(parts), prompt=prompt)

        try:
            stream = await self.client().chat.completions.create(
                model=self.model,
                # The messages travel in extra_body, which the SDK sends as given: its
                # per-message TypedDict transform took 9-13 ms for a full prompt (on the
                # time to first token), for text that is plain strings already.
                messages=[],
                extra_body={"messages": self.messages(prompt)},
                max_tokens=min(prompt.max_output_tokens, self.max_output_tokens),
                stream=True,
                stream_options={"include_usage": True},
            )
        except Exception as exc:
            raise fail(exc) from exc

        reported: Any = None
        finished = False
        try:
            async for chunk in stream:
                if chunk.usage is not None:  # the last chunk (choices: []), or on the final choice for some servers
                    reported = chunk.usage
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    content = choice.delta.content if choice.delta is not None else None
                    if content:
                        parts.append(content)
                        yield TextDelta(content)
                    if choice.finish_reason is not None:
                        finished = True
        except Exception as exc:
            raise fail(exc) from exc
        finally:
            await stream.close()

        text = "".join(parts)
        if not finished:  # the body ended cleanly but the model never said it was done: cut off
            raise fail(ProviderError("the stream ended before the model finished", code=PROVIDER_UNAVAILABLE))
        if reported is not None and reported.prompt_tokens is not None:
            yield Usage(input_tokens=reported.prompt_tokens or 0, output_tokens=reported.completion_tokens or 0)
        else:
            # The server sent no usage (some OpenAI-compatible servers ignore
            # stream_options): estimate with the four-characters-per-token heuristic.
            yield Usage(input_tokens=estimate_input_tokens(prompt), output_tokens=estimate_text_tokens(text))
