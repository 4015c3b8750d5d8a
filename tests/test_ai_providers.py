"""AI providers through the official SDKs against local stand-ins of the real APIs.

No database and no patched SDK: ``openai.AsyncOpenAI`` and
``anthropic.AsyncAnthropic`` talk HTTP to the stand-ins in
``tests/support/llm_standins.py``, reached through the base-URL settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from server.domain.llm.anthropic_provider import AnthropicProvider
from server.domain.llm.offline_provider import MODEL as OFFLINE_MODEL
from server.domain.llm.offline_provider import OfflineProvider, offline_reply
from server.domain.llm.openai_provider import OpenAIProvider
from server.domain.llm.providers import (
    ChatTurn,
    Passage,
    Prompt,
    Provider,
    ProviderError,
    TextDelta,
    Usage,
    cited_numbers,
    estimate_input_tokens,
    estimate_text_tokens,
    stream_reply,
    system_text,
)
from server.domain.llm.registry import build_providers, provider_order
from server.foundation.settings import SettingsError, load_settings
from tests.support.llm_standins import (
    AnthropicStandin,
    OpenAIStandin,
    running_anthropic_standin,
    running_openai_standin,
)

KEY = "sk-test-key"
REPLY = "Start with one small habit [1], then review it weekly [2]. You can do this!"

PASSAGES = [
    Passage(
        source="note",
        source_id="n-1",
        title="Morning routine",
        chunk=0,
        text="Wake up at the same time every day. Write three priorities before opening email. Keep it small.",
        score=0.91,
    ),
    Passage(
        source="file",
        source_id="f-7",
        title="Weekly review guide",
        chunk=3,
        text="Every Friday, look back at what worked and what did not, and pick one change for next week.",
        score=0.84,
    ),
]
PROMPT = Prompt(
    system="You are Coach. Be warm and brief.",
    turns=[
        ChatTurn("user", "Hi coach"),
        ChatTurn("assistant", "Hello! What would you like to work on?"),
        ChatTurn("user", "How do I build a routine that sticks?"),
    ],
    passages=PASSAGES,
    max_output_tokens=300,
)


@pytest.fixture(scope="session")
async def openai_server() -> AsyncIterator[OpenAIStandin]:
    async with running_openai_standin() as standin:
        yield standin


@pytest.fixture(scope="session")
async def anthropic_server() -> AsyncIterator[AnthropicStandin]:
    async with running_anthropic_standin() as standin:
        yield standin


@pytest.fixture
def openai_standin(openai_server: OpenAIStandin) -> OpenAIStandin:
    """The shared OpenAI stand-in, its knobs and records reset for this test."""
    openai_server.reset(reply=REPLY, api_key=KEY)
    return openai_server


@pytest.fixture
def anthropic_standin(anthropic_server: AnthropicStandin) -> AnthropicStandin:
    """The shared Anthropic stand-in, its knobs and records reset for this test."""
    anthropic_server.reset(reply=REPLY, api_key=KEY)
    return anthropic_server


@pytest.fixture
async def closing() -> AsyncIterator[Callable[[Any], Any]]:
    """Registers SDK-backed providers whose clients are closed after the test."""
    made: list[Any] = []
    yield lambda provider: made.append(provider) or provider
    for provider in made:
        await provider.aclose()


@pytest.fixture
def make_openai(closing: Callable[[Any], Any]) -> Callable[..., OpenAIProvider]:
    def make(standin: OpenAIStandin, **options: Any) -> OpenAIProvider:
        options = {"api_key": KEY, "max_retries": 0, "timeout": 5.0, **options}
        return closing(OpenAIProvider(base_url=standin.base_url, **options))

    return make


@pytest.fixture
def make_anthropic(closing: Callable[[Any], Any]) -> Callable[..., AnthropicProvider]:
    def make(standin: AnthropicStandin, **options: Any) -> AnthropicProvider:
        options = {"api_key": KEY, "max_retries": 0, "timeout": 5.0, **options}
        return closing(AnthropicProvider(base_url=standin.base_url, **options))

    return make


async def collect(events: AsyncIterator[Any]) -> tuple[list[str], list[Usage]]:
    deltas: list[str] = []
    usages: list[Usage] = []
    async for event in events:
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            assert isinstance(event, Usage)
            usages.append(event)
    return deltas, usages


async def reply(providers: list[Provider], prompt: Prompt = PROMPT) -> tuple[set[str], str, list[Usage]]:
    """Run :func:`stream_reply`: the providers that streamed, the text, the usage events."""
    names: set[str] = set()
    text: list[str] = []
    usages: list[Usage] = []
    async for provider, event in stream_reply(providers, prompt):
        names.add(provider.name)
        if isinstance(event, TextDelta):
            assert not usages, "text after the usage event"
            text.append(event.text)
        else:
            usages.append(event)
    return names, "".join(text), usages


# -- streaming through the SDKs ---------------------------------------------------------------


async def test_openai_streams_text_in_order_and_reports_usage(
    openai_standin: OpenAIStandin, make_openai: Callable[..., OpenAIProvider]
) -> None:
    provider = make_openai(openai_standin)
    deltas, usages = await collect(provider.stream(PROMPT))

    assert deltas == openai_standin.chunks() and len(deltas) > 5
    assert "".join(deltas) == REPLY
    assert usages == [Usage(*openai_standin.reported_usage[-1])]
    assert usages[0].output_tokens == len(deltas)

    request = openai_standin.last
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = request.body
    assert body["model"] == "gpt-4o-mini"
    assert body["max_tokens"] == 300
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    system, *turns = body["messages"]
    assert system == {"role": "system", "content": system_text(PROMPT)}
    assert system["content"].startswith(PROMPT.system)
    assert '[1] "Morning routine"' in system["content"] and '[2] "Weekly review guide"' in system["content"]
    assert PASSAGES[1].text in system["content"]
    assert turns == [{"role": t.role, "content": t.content} for t in PROMPT.turns]


async def test_anthropic_streams_text_in_order_and_reports_usage(
    anthropic_standin: AnthropicStandin, make_anthropic: Callable[..., AnthropicProvider]
) -> None:
    provider = make_anthropic(anthropic_standin, model="claude-test-model")
    deltas, usages = await collect(provider.stream(PROMPT))

    assert deltas == anthropic_standin.chunks()
    assert "".join(deltas) == REPLY
    # input from message_start, output from message_delta
    assert usages == [Usage(*anthropic_standin.reported_usage[-1])]

    request = anthropic_standin.last
    assert request.path == "/v1/messages"
    assert request.headers.get("anthropic-version")
    body = request.body
    assert body["model"] == "claude-test-model"
    assert body["max_tokens"] == 300 and body["stream"] is True
    assert body["system"] == system_text(PROMPT)
    assert "[1]" in body["system"] and "[2]" in body["system"] and PASSAGES[0].text in body["system"]
    assert body["messages"] == [{"role": t.role, "content": t.content} for t in PROMPT.turns]


async def test_anthropic_messages_alternate_and_open_with_the_user(
    anthropic_standin: AnthropicStandin, make_anthropic: Callable[..., AnthropicProvider]
) -> None:
    prompt = Prompt(
        system="",
        turns=[
            ChatTurn("assistant", "Welcome to the lounge!"),
            ChatTurn("user", "Ana: I keep procrastinating."),
            ChatTurn("user", "Ben: Same here."),
        ],
    )
    deltas, _ = await collect(make_anthropic(anthropic_standin).stream(prompt))
    assert "".join(deltas) == REPLY
    body = anthropic_standin.last.body
    assert body["messages"] == [{"role": "user", "content": "Ana: I keep procrastinating.\n\nBen: Same here."}]
    assert "system" not in body  # an empty system text is left out, not sent empty


async def test_output_tokens_are_capped_by_settings(
    openai_standin: OpenAIStandin,
    anthropic_standin: AnthropicStandin,
    make_openai: Callable[..., OpenAIProvider],
    make_anthropic: Callable[..., AnthropicProvider],
) -> None:
    # The stand-ins count one chunk as one token, and stop at max_tokens like the real APIs.
    for standin, provider in (
        (openai_standin, make_openai(openai_standin, max_output_tokens=4)),
        (anthropic_standin, make_anthropic(anthropic_standin, max_output_tokens=4)),
    ):
        deltas, usages = await collect(provider.stream(PROMPT))
        assert standin.last.body["max_tokens"] == 4
        assert deltas == standin.chunks()[:4]
        assert usages[0].output_tokens == 4


async def test_usage_is_estimated_when_the_server_sends_none(
    make_openai: Callable[..., OpenAIProvider],
) -> None:
    # Some OpenAI-compatible servers ignore stream_options.include_usage.
    async with running_openai_standin(reply=REPLY, send_usage=False) as standin:
        deltas, usages = await collect(make_openai(standin).stream(PROMPT))
    assert "".join(deltas) == REPLY
    assert usages == [Usage(estimate_input_tokens(PROMPT), estimate_text_tokens(REPLY))]
    assert usages[0].input_tokens > 0 and usages[0].output_tokens == -(-len(REPLY) // 4)


async def test_openai_compatible_server_with_another_model_name(make_openai: Callable[..., OpenAIProvider]) -> None:
    # e.g. Ollama at http://127.0.0.1:11434/v1 with model "llama3.2" and a dummy key.
    async with running_openai_standin(reply="Local model here.") as standin:
        provider = make_openai(standin, api_key="ollama", model="llama3.2")
        deltas, usages = await collect(provider.stream(PROMPT))
    assert "".join(deltas) == "Local model here."
    assert standin.last.body["model"] == "llama3.2"
    assert standin.last.headers["authorization"] == "Bearer ollama"
    assert len(usages) == 1


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "rate_limited"),
        (401, "auth_failed"),
        (403, "auth_failed"),
        (500, "provider_unavailable"),
        (503, "provider_unavailable"),
        (400, "bad_request"),
        (404, "bad_request"),
    ],
)
async def test_openai_errors_are_mapped(
    openai_standin: OpenAIStandin, make_openai: Callable[..., OpenAIProvider], status: int, code: str
) -> None:
    openai_standin.fail_status = status
    with pytest.raises(ProviderError) as caught:
        await collect(make_openai(openai_standin).stream(PROMPT))
    assert caught.value.code == code
    assert caught.value.status == status
    assert caught.value.provider == "openai"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "rate_limited"),
        (401, "auth_failed"),
        (403, "auth_failed"),
        (500, "provider_unavailable"),
        (529, "provider_unavailable"),
        (400, "bad_request"),
        (413, "bad_request"),
    ],
)
async def test_anthropic_errors_are_mapped(
    anthropic_standin: AnthropicStandin, make_anthropic: Callable[..., AnthropicProvider], status: int, code: str
) -> None:
    anthropic_standin.fail_status = status
    with pytest.raises(ProviderError) as caught:
        await collect(make_anthropic(anthropic_standin).stream(PROMPT))
    assert caught.value.code == code
    assert caught.value.status == status
    assert caught.value.provider == "anthropic"


async def test_a_wrong_key_is_auth_failed(
    openai_standin: OpenAIStandin,
    anthropic_standin: AnthropicStandin,
    make_openai: Callable[..., OpenAIProvider],
    make_anthropic: Callable[..., AnthropicProvider],
) -> None:
    for provider in (
        make_openai(openai_standin, api_key="sk-wrong"),
        make_anthropic(anthropic_standin, api_key="sk-wrong"),
    ):
        with pytest.raises(ProviderError) as caught:
            await collect(provider.stream(PROMPT))
        assert caught.value.code == "auth_failed"


async def test_unreachable_server_and_timeout_are_provider_unavailable(
    make_openai: Callable[..., OpenAIProvider], make_anthropic: Callable[..., AnthropicProvider]
) -> None:
    async with running_openai_standin(reply=REPLY) as gone:
        pass  # stopped: its port now refuses connections
    with pytest.raises(ProviderError) as caught:
        await collect(make_openai(gone).stream(PROMPT))
    assert caught.value.code == "provider_unavailable"

    async with running_anthropic_standin(reply=REPLY, headers_delay=5.0) as slow:
        with pytest.raises(ProviderError) as caught:
            await collect(make_anthropic(slow, timeout=0.3).stream(PROMPT))
        assert caught.value.code == "provider_unavailable"
        # The slow response is abandoned: the stand-in sees the client go away.
        for _ in range(100):
            if slow.disconnects:
                break
            await asyncio.sleep(0.02)
        assert slow.disconnects == 1


async def test_sdk_retries_come_from_settings(
    openai_standin: OpenAIStandin, make_openai: Callable[..., OpenAIProvider]
) -> None:
    # One 500, then success: with AI_MAX_RETRIES=1 the SDK retries by itself.
    openai_standin.fail_status, openai_standin.fail_times = 500, 1
    deltas, _ = await collect(make_openai(openai_standin, max_retries=1).stream(PROMPT))
    assert "".join(deltas) == REPLY
    assert len(openai_standin.requests) == 2


# -- fallback ----------------------------------------------------------------------------------


async def test_fallback_when_the_first_provider_fails_before_its_first_token(
    openai_standin: OpenAIStandin,
    anthropic_standin: AnthropicStandin,
    make_openai: Callable[..., OpenAIProvider],
    make_anthropic: Callable[..., AnthropicProvider],
) -> None:
    openai_standin.fail_status = 500
    anthropic_standin.reply = "Anthropic answers instead."
    providers: list[Provider] = [make_openai(openai_standin), make_anthropic(anthropic_standin), OfflineProvider()]

    names, text, usages = await reply(providers)

    assert names == {"anthropic"}
    assert text == "Anthropic answers instead."
    assert usages == [Usage(*anthropic_standin.reported_usage[-1])]
    assert len(openai_standin.requests) == 1 and len(anthropic_standin.requests) == 1


async def test_offline_answers_when_both_model_providers_fail(
    openai_standin: OpenAIStandin,
    anthropic_standin: AnthropicStandin,
    make_openai: Callable[..., OpenAIProvider],
    make_anthropic: Callable[..., AnthropicProvider],
) -> None:
    openai_standin.fail_status = 429
    anthropic_standin.fail_status = 529
    providers: list[Provider] = [make_openai(openai_standin), make_anthropic(anthropic_standin), OfflineProvider()]

    names, text, usages = await reply(providers)

    assert names == {"offline"}
    assert text == offline_reply(PROMPT)
    assert "Offline coach" in text and "[1]" in text
    assert usages == [Usage(estimate_input_tokens(PROMPT), estimate_text_tokens(text))]


async def test_everything_failing_is_all_providers_failed(
    openai_standin: OpenAIStandin,
    anthropic_standin: AnthropicStandin,
    make_openai: Callable[..., OpenAIProvider],
    make_anthropic: Callable[..., AnthropicProvider],
) -> None:
    openai_standin.fail_status = 401
    anthropic_standin.mid_stream, anthropic_standin.fail_after_chunks = "error_event", 0  # overloaded before any text
    providers: list[Provider] = [make_openai(openai_standin), make_anthropic(anthropic_standin)]

    with pytest.raises(ProviderError) as caught:
        await reply(providers)

    assert caught.value.code == "all_providers_failed"
    assert [(e.provider, e.code) for e in caught.value.causes] == [
        ("openai", "auth_failed"),
        ("anthropic", "provider_unavailable"),
    ]
    assert caught.value.partial_text == ""

    with pytest.raises(ProviderError) as caught:
        await reply([])
    assert caught.value.code == "all_providers_failed"


@pytest.mark.parametrize("provider_name", ["openai", "anthropic"])
@pytest.mark.parametrize("how", ["close", "error_event", "truncate"])
async def test_failure_after_the_first_token_is_stream_interrupted_with_the_partial_text(
    openai_standin: OpenAIStandin,
    anthropic_standin: AnthropicStandin,
    make_openai: Callable[..., OpenAIProvider],
    make_anthropic: Callable[..., AnthropicProvider],
    provider_name: str,
    how: str,
) -> None:
    failing: OpenAIStandin | AnthropicStandin = openai_standin if provider_name == "openai" else anthropic_standin
    failing.fail_after_chunks, failing.mid_stream = 3, how  # type: ignore[assignment]
    first: Provider = make_openai(openai_standin) if provider_name == "openai" else make_anthropic(anthropic_standin)
    providers: list[Provider] = [first, OfflineProvider()]

    received: list[str] = []
    with pytest.raises(ProviderError) as caught:
        async for provider, event in stream_reply(providers, PROMPT):
            assert provider is first  # never the offline one: a started reply does not fall back
            assert isinstance(event, TextDelta)
            received.append(event.text)

    error = caught.value
    assert error.code == "stream_interrupted"
    assert error.provider == provider_name
    assert received == failing.chunks(3)
    assert error.partial_text == "".join(failing.chunks(3))
    assert error.cause == "provider_unavailable"
    # What was spent is still known, for the ledger.
    assert error.usage is not None and error.usage.input_tokens > 0 and error.usage.output_tokens >= 3


async def test_closing_the_reply_early_closes_the_http_stream(
    make_openai: Callable[..., OpenAIProvider],
) -> None:
    async with running_openai_standin(reply=REPLY, chunk_delay=0.05) as standin:
        async with contextlib.aclosing(stream_reply([make_openai(standin)], PROMPT)) as events:
            async for _provider, event in events:
                assert isinstance(event, TextDelta)
                break
        for _ in range(100):
            if standin.disconnects:
                break
            await asyncio.sleep(0.02)
        assert standin.disconnects == 1
        assert not standin.reported_usage  # the stand-in never finished the stream


# -- offline -----------------------------------------------------------------------------------


async def test_offline_provider_is_deterministic_and_cites_passages() -> None:
    provider = OfflineProvider()
    assert (provider.name, provider.model) == ("offline", OFFLINE_MODEL) == ("offline", "lounges-offline-1")

    first, usage_1 = await collect(provider.stream(PROMPT))
    second, usage_2 = await collect(OfflineProvider().stream(PROMPT))
    assert first == second and usage_1 == usage_2
    text = "".join(first)
    assert text == offline_reply(PROMPT)

    assert text.startswith("(Offline coach")  # clearly labelled
    assert "Morning routine [1]" in text
    assert "Wake up at the same time every day." in text  # quotes the passage
    assert "Weekly review guide" not in text  # retrieved, but shares no word with the question
    assert "routine that sticks" in text  # the coaching prompt is built from the question
    assert cited_numbers(text, PASSAGES) == [1]
    # Word by word, like a model's tokens.
    assert len(first) > 10 and all(len(d.split()) == 1 for d in first)
    assert usage_1 == [Usage(estimate_input_tokens(PROMPT), estimate_text_tokens(text))]


async def test_offline_provider_cites_relevant_passages_by_their_number_and_never_echoes_the_mention() -> None:
    prompt = Prompt(
        system="",
        turns=[ChatTurn("user", "Ana: @coach, how should my weekly review go?")],
        passages=PASSAGES,
    )
    text = offline_reply(prompt)
    assert "Weekly review guide [2]" in text and "Morning routine" not in text
    assert cited_numbers(text, PASSAGES) == [2]  # the passage keeps its number in the prompt
    assert "@coach" not in text and "how should my weekly review go" in text


async def test_offline_provider_streams_at_its_configured_pace() -> None:
    prompt = Prompt(system="", turns=[ChatTurn("user", "How do I build a routine that sticks?")], passages=PASSAGES)
    words = len(offline_reply(prompt).split())
    arrivals: list[float] = []
    started = time.monotonic()
    async for event in OfflineProvider(words_per_second=200).stream(prompt):
        if isinstance(event, TextDelta):
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == words
    assert arrivals[-1] >= (words - 1) / 200 * 0.9  # paced: a stream a client can watch and cancel
    assert arrivals[0] < 0.05  # the first word is not held back


async def test_offline_provider_without_passages_says_it_is_offline() -> None:
    prompt = Prompt(system="", turns=[ChatTurn("user", "Sam: How can I stop doubting myself?")])
    deltas, usages = await collect(OfflineProvider().stream(prompt))
    text = "".join(deltas)
    assert "offline coach" in text.lower()
    assert "How can I stop doubting myself" in text and "Sam:" not in text
    assert "[1]" not in text
    assert text == offline_reply(prompt)
    assert usages[0].output_tokens == estimate_text_tokens(text)

    other = offline_reply(Prompt(system="", turns=[ChatTurn("user", "Something else entirely")]))
    assert other != text


async def test_offline_provider_handles_an_empty_conversation() -> None:
    deltas, usages = await collect(OfflineProvider().stream(Prompt(system="", turns=[])))
    assert "offline coach" in "".join(deltas).lower() and len(usages) == 1


# -- configuration -----------------------------------------------------------------------------


def test_with_no_keys_only_offline_remains() -> None:
    providers = build_providers(load_settings({}))
    assert [p.name for p in providers] == ["offline"]
    assert build_providers(load_settings({"AI_PROVIDERS": "openai,anthropic"})) == []


def test_provider_order_follows_settings_and_offline_is_last() -> None:
    settings = load_settings(
        {"AI_PROVIDERS": "offline, anthropic,openai", "OPENAI_API_KEY": "sk-a", "ANTHROPIC_API_KEY": "sk-b"}
    )
    providers = build_providers(settings)
    assert [p.name for p in providers] == ["anthropic", "openai", "offline"]
    assert [p.model for p in providers] == ["claude-3-5-haiku-latest", "gpt-4o-mini", "lounges-offline-1"]
    assert [p.name for p in build_providers(load_settings({"ANTHROPIC_API_KEY": "sk-b"}))] == ["anthropic", "offline"]
    assert build_providers(settings) == providers  # cached: the SDK clients are reused
    assert provider_order("openai,openai,offline,anthropic") == ["openai", "anthropic", "offline"]


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        ({"AI_PROVIDERS": "openai,gemini"}, "AI_PROVIDERS"),
        ({"OPENAI_BASE_URL": "localhost:11434"}, "OPENAI_BASE_URL"),
        ({"ANTHROPIC_BASE_URL": "ftp://x"}, "ANTHROPIC_BASE_URL"),
        ({"AI_TIMEOUT_SECONDS": "0"}, "AI_TIMEOUT_SECONDS"),
        ({"AI_MAX_RETRIES": "-1"}, "AI_MAX_RETRIES"),
        ({"AI_MAX_OUTPUT_TOKENS": "0"}, "AI_MAX_OUTPUT_TOKENS"),
    ],
)
def test_bad_ai_settings_name_the_variable(environ: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    assert name in str(caught.value)


async def test_settings_reach_the_stand_ins_through_the_base_urls(
    openai_standin: OpenAIStandin, anthropic_standin: AnthropicStandin, closing: Callable[[Any], Any]
) -> None:
    settings = load_settings(
        {
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": openai_standin.base_url,
            "OPENAI_MODEL": "gpt-test",
            "ANTHROPIC_API_KEY": KEY,
            "ANTHROPIC_BASE_URL": anthropic_standin.base_url,
            "ANTHROPIC_MODEL": "claude-test",
            "AI_MAX_RETRIES": "0",
            "AI_TIMEOUT_SECONDS": "5",
            "AI_MAX_OUTPUT_TOKENS": "64",
        }
    )
    providers = build_providers(settings)
    for provider in providers[:2]:
        closing(provider)

    names, text, _ = await reply(providers)
    assert names == {"openai"} and text == REPLY
    assert openai_standin.last.body["model"] == "gpt-test"
    assert openai_standin.last.body["max_tokens"] == 64
    # AI_TIMEOUT_SECONDS reaches the SDK client (which announces its read timeout).
    assert float(openai_standin.last.headers["x-stainless-read-timeout"]) == 5.0

    openai_standin.fail_status = 503
    names, text, _ = await reply(providers)
    assert names == {"anthropic"} and text == REPLY
    assert len(openai_standin.requests) == 2  # AI_MAX_RETRIES=0: the 503 was not retried
    assert anthropic_standin.last.body["model"] == "claude-test"
    assert anthropic_standin.last.body["max_tokens"] == 64
    assert float(anthropic_standin.last.headers["x-stainless-read-timeout"]) == 5.0
