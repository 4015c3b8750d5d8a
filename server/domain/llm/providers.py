"""Language-model providers behind one small streaming interface, with ordered fallback.

A provider turns a :class:`Prompt` into a stream of :class:`TextDelta` and,
last, one :class:`Usage`. :func:`stream_reply` tries the configured providers
in order; a provider that fails *before its first token* is skipped for the
next one, a failure after that is the reply's failure (the text so far is kept).

Providers: :mod:`server.domain.llm.openai_provider` (OpenAI and any OpenAI-compatible
server through a base URL), :mod:`server.domain.llm.anthropic_provider` and
:mod:`server.domain.llm.offline_provider` (deterministic, no network, clearly labelled).
:func:`server.domain.llm.registry.build_providers` makes the ordered list from the settings.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Literal, Protocol

import msgspec
from opentelemetry.trace import Span

from server.domain.llm.metrics import provider_failed
from server.foundation import tracing

log = logging.getLogger("lounges.ai")


class ChatTurn(msgspec.Struct, frozen=True):
    role: Literal["user", "assistant"]
    content: str


class Passage(msgspec.Struct, frozen=True):
    """A retrieved piece of the user's notes or the lounge's knowledge files."""

    source: Literal["note", "file"]
    source_id: str
    title: str
    chunk: int
    text: str
    score: float


class Prompt(msgspec.Struct, frozen=True):
    system: str
    turns: list[ChatTurn]
    passages: list[Passage] = msgspec.field(default_factory=list)
    max_output_tokens: int = 800


class TextDelta(msgspec.Struct, frozen=True):
    text: str


class Usage(msgspec.Struct, frozen=True):
    input_tokens: int
    output_tokens: int


StreamEvent = TextDelta | Usage

# Stable error codes (ProviderError.code).
PROVIDER_UNAVAILABLE = "provider_unavailable"  # connection error, timeout, 5xx/529, 408/409, a broken response
RATE_LIMITED = "rate_limited"  # 429
AUTH_FAILED = "auth_failed"  # 401, 403
BAD_REQUEST = "bad_request"  # other 4xx: the request itself was refused
STREAM_INTERRUPTED = "stream_interrupted"  # failed after the first token; the partial text is kept
ALL_PROVIDERS_FAILED = "all_providers_failed"  # every provider failed before its first token (or none is set up)


class ProviderError(Exception):
    """A provider could not answer; ``code`` is stable (``provider_unavailable``, ``rate_limited``, ...).

    ``provider``: the provider's name. ``status``: the HTTP status, when there was one.
    ``partial_text``: what was streamed before a ``stream_interrupted`` failure.
    ``cause``: for ``stream_interrupted``, the code of the underlying failure.
    ``usage``: for ``stream_interrupted``, the tokens spent so far (reported or estimated).
    ``causes``: for ``all_providers_failed``, each provider's own error, in the order tried.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "provider_error",
        provider: str | None = None,
        status: int | None = None,
        partial_text: str = "",
        cause: str | None = None,
        usage: Usage | None = None,
        causes: Sequence[ProviderError] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.provider = provider
        self.status = status
        self.partial_text = partial_text
        self.cause = cause
        self.usage = usage
        self.causes = list(causes)


class Provider(Protocol):
    name: str
    model: str

    def stream(self, prompt: Prompt) -> AsyncIterator[StreamEvent]: ...


# -- shared by the providers ----------------------------------------------------------------

# Token estimates, for servers that report no usage, interrupted streams and the
# offline provider: about four characters per token (the usual rule of thumb for
# English with BPE tokenizers), rounded up, plus a few tokens of framing per message.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def estimate_text_tokens(text: str) -> int:
    """Tokens in ``text`` by the four-characters-per-token heuristic (0 for no text)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_input_tokens(prompt: Prompt) -> int:
    """Tokens the provider reads for ``prompt``: the system text with its passages, then every turn."""
    messages = [system_text(prompt), *(turn.content for turn in prompt.turns)]
    return sum(estimate_text_tokens(text) + TOKENS_PER_MESSAGE for text in messages)


PASSAGES_HEADER = (
    "Passages retrieved from the user's notes and the lounge's knowledge files. "
    "When you use one, cite it by its number in square brackets, like [1]."
)
_SOURCE_LABELS = {"note": "the user's notes", "file": "the lounge's knowledge files"}


def render_passages(passages: Sequence[Passage]) -> str:
    """The passages as numbered sources ``[1]``, ``[2]``, ... in the given order ('' without passages)."""
    if not passages:
        return ""
    blocks = [
        f'[{n}] "{p.title}" (from {_SOURCE_LABELS.get(p.source, p.source)})\n{p.text.strip()}'
        for n, p in enumerate(passages, start=1)
    ]
    return PASSAGES_HEADER + "\n\n" + "\n\n".join(blocks)


def system_text(prompt: Prompt) -> str:
    """The system message sent to a model: the prompt's system text, then its numbered passages."""
    return "\n\n".join(part for part in (prompt.system.strip(), render_passages(prompt.passages)) if part)


_CITATION = re.compile(r"\[(\d{1,3})\]")


def cited_numbers(text: str, passages: Sequence[Passage]) -> list[int]:
    """The passage numbers (1-based) ``text`` cites as ``[n]``, in order of first citation."""
    seen: list[int] = []
    for match in _CITATION.finditer(text):
        n = int(match.group(1))
        if 1 <= n <= len(passages) and n not in seen:
            seen.append(n)
    return seen


# Error bodies' types (Anthropic's ``{"type": "error", "error": {"type": ...}}``,
# also sent as an SSE ``error`` event mid-stream, where the HTTP status is 200).
_ERROR_TYPES = {
    "overloaded_error": PROVIDER_UNAVAILABLE,
    "api_error": PROVIDER_UNAVAILABLE,
    "server_error": PROVIDER_UNAVAILABLE,
    "timeout_error": PROVIDER_UNAVAILABLE,
    "rate_limit_error": RATE_LIMITED,
    "authentication_error": AUTH_FAILED,
    "permission_error": AUTH_FAILED,
    "billing_error": AUTH_FAILED,
    "invalid_request_error": BAD_REQUEST,
    "not_found_error": BAD_REQUEST,
    "request_too_large": BAD_REQUEST,
}


def code_for_status(status: int | None, body: object = None) -> str:
    """The stable code for an HTTP error status (and, when the status says nothing, the body's error type)."""
    if status in (401, 403):
        return AUTH_FAILED
    if status == 429:
        return RATE_LIMITED
    if status is not None and (status >= 500 or status in (408, 409)):
        return PROVIDER_UNAVAILABLE
    if status is not None and 400 <= status < 500:
        return BAD_REQUEST
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return _ERROR_TYPES.get(kind, PROVIDER_UNAVAILABLE) if isinstance(kind, str) else PROVIDER_UNAVAILABLE


def failure(
    provider: Provider, exc: BaseException, code: str, *, status: int | None, started: bool, text: str, prompt: Prompt
) -> ProviderError:
    """The :class:`ProviderError` for ``exc``: its own code before the first token, ``stream_interrupted`` after."""
    message = f"{provider.name} ({provider.model}): {exc}" if str(exc) else f"{provider.name}: {type(exc).__name__}"
    if not started:
        return ProviderError(message, code=code, provider=provider.name, status=status)
    return ProviderError(
        message,
        code=STREAM_INTERRUPTED,
        provider=provider.name,
        status=status,
        partial_text=text,
        cause=code,
        usage=Usage(estimate_input_tokens(prompt), estimate_text_tokens(text)),
    )


# -- fallback --------------------------------------------------------------------------------


def _provider_span(provider: Provider) -> Span:
    """``coach.provider``: one provider's attempt at a reply, from its request to its last event."""
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider.name,
        "gen_ai.request.model": provider.model,
    }
    return tracing.tracer.start_span("coach.provider", attributes=attributes)


async def stream_reply(
    providers: Sequence[Provider], prompt: Prompt
) -> AsyncGenerator[tuple[Provider, StreamEvent], None]:
    """Stream the reply to ``prompt`` as ``(provider, event)`` pairs from the first provider that answers.

    A provider that fails before its first event (connection error, timeout, 5xx,
    429, auth or request error) is skipped for the next one; when none is left,
    :class:`ProviderError` ``all_providers_failed`` is raised (``causes`` holds each
    provider's error). Once a provider has streamed, it is the reply's provider: a
    later failure raises ``stream_interrupted`` with ``partial_text`` (everything
    yielded so far), ``cause`` and an estimated ``usage``. The last event of a
    complete reply is one :class:`Usage`.

    Close the generator when stopping early (``contextlib.aclosing``): that closes
    the provider's HTTP stream at once.
    """
    failures: list[ProviderError] = []
    for index, provider in enumerate(providers):
        falling_back = index + 1 < len(providers)
        events = provider.stream(prompt)
        # Tracing on: a coach.provider span per provider tried, current while its request goes out
        # (the SDK's HTTP span is its child) but not across yields (the caller's code is not its own).
        span = _provider_span(provider) if tracing.TRACING else None
        try:
            try:
                with tracing.current(span):
                    first = await anext(events)
            except StopAsyncIteration:
                failures.append(
                    ProviderError(
                        f"{provider.name}: ended without answering", code=PROVIDER_UNAVAILABLE, provider=provider.name
                    )
                )
                provider_failed(provider.name, PROVIDER_UNAVAILABLE, falling_back=falling_back)
                continue
            except ProviderError as exc:
                exc.provider = exc.provider or provider.name
                failures.append(exc)
                if span is not None:
                    tracing.failed(exc.code, str(exc), span=span)
                provider_failed(provider.name, exc.code, falling_back=falling_back)
                log.warning(
                    "AI provider failed before answering, trying the next one",
                    extra={"provider": provider.name, "code": exc.code, "error": str(exc)},
                )
                continue
            except Exception as exc:  # a provider bug must not stop the fallback
                log.exception("AI provider crashed before answering", extra={"provider": provider.name})
                failures.append(
                    ProviderError(f"{provider.name}: {exc!r}", code=PROVIDER_UNAVAILABLE, provider=provider.name)
                )
                provider_failed(provider.name, PROVIDER_UNAVAILABLE, falling_back=falling_back)
                continue

            streamed: list[str] = []
            if isinstance(first, TextDelta):
                streamed.append(first.text)
            yield provider, first
            try:
                async for event in events:
                    if isinstance(event, TextDelta):
                        streamed.append(event.text)
                    elif span is not None:
                        span.set_attributes(
                            {
                                "gen_ai.usage.input_tokens": event.input_tokens,
                                "gen_ai.usage.output_tokens": event.output_tokens,
                            }
                        )
                    yield provider, event
            except Exception as exc:
                text = "".join(streamed)
                own = exc if isinstance(exc, ProviderError) else None
                cause = own.cause if own is not None and own.code == STREAM_INTERRUPTED else None
                if cause is None:
                    cause = own.code if own is not None else PROVIDER_UNAVAILABLE
                usage = own.usage if own is not None and own.usage is not None else None
                if span is not None:
                    tracing.failed(STREAM_INTERRUPTED, f"{cause}: {exc}", span=span)
                provider_failed(provider.name, STREAM_INTERRUPTED, falling_back=False)
                raise ProviderError(
                    str(exc) or f"{provider.name}: the stream broke off",
                    code=STREAM_INTERRUPTED,
                    provider=provider.name,
                    status=own.status if own is not None else None,
                    partial_text=text,
                    cause=cause,
                    usage=usage or Usage(estimate_input_tokens(prompt), estimate_text_tokens(text)),
                ) from exc
            return
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
            if span is not None:
                span.end()
    detail = "; ".join(f"{e.provider}: {e.code}" for e in failures) or "no provider is configured"
    raise ProviderError(f"every AI provider failed ({detail})", code=ALL_PROVIDERS_FAILED, causes=failures)
