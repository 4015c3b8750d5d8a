"""The coach's Prometheus series: how fast replies come, how they end, what they cost.

Labels: the provider (``openai``, ``anthropic``, ``offline``; ``none`` before one
answered), its model (from the settings, so a fixed set), the outcome (``complete``,
``cancelled``, ``failed``, ``refused``) and a stable code; never a user, thread or lounge.
Times are measured from the moment a worker starts the reply's job.
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Histogram

from server.domain.llm.metrics import CODES as PROVIDER_CODES
from server.domain.llm.metrics import PROVIDERS
from server.domain.llm.providers import Usage
from server.foundation import metrics
from server.foundation.settings import Settings, token_prices

REPLY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0, 120.0)

FIRST_TOKEN_SECONDS = Histogram(
    "lounges_coach_first_token_seconds",
    "From the reply job's start (slot, prompt, retrieval) to the provider's first text",
    ["provider", "model"],
    buckets=REPLY_BUCKETS,
)
REPLY_SECONDS = Histogram(
    "lounges_coach_reply_seconds",
    "From the reply job's start to the provider's last text, for complete replies",
    ["provider", "model"],
    buckets=REPLY_BUCKETS,
)
PROMPT_SECONDS = Histogram(
    "lounges_coach_prompt_seconds",
    "Building a reply's prompt: the conversation, pinned notes, the question's embedding and the retrieval",
    buckets=metrics.FAST_BUCKETS,
)
REPLIES = Counter(
    "lounges_coach_replies_total",
    "Coach replies ended, by provider, outcome (complete, cancelled, failed, refused) and code",
    ["provider", "outcome", "code"],
)
TOKENS = Counter(
    "lounges_coach_tokens_total",
    "Tokens of stored replies (as the provider reported, else estimated), by provider, model and kind",
    ["provider", "model", "kind"],
)
COST = Counter(
    "lounges_coach_cost_usd_total",
    "What stored replies cost at AI_TOKEN_PRICES, in US dollars, by provider and model",
    ["provider", "model"],
)

OUTCOMES = ("complete", "cancelled", "failed", "refused")
CODES = (*PROVIDER_CODES, "all_providers_failed", "internal", "interrupted", "worker_lost", "none")
REFUSALS = ("ai_busy", "ai_budget_exceeded", "message_deleted", "none")


@functools.lru_cache(maxsize=8)
def _prices(entries: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    return token_prices(list(entries))


def _provider(name: str) -> str:
    return metrics.bounded(name, PROVIDERS, "none")


def prompt_built(seconds: float) -> None:
    if metrics.collecting:
        PROMPT_SECONDS.observe(seconds)


def reply_timed(provider: str, model: str, started: float, first_text: float | None, ended: float | None) -> None:
    """A reply's times (``time.perf_counter()`` readings): started, first text, last text (complete only)."""
    if not metrics.collecting or first_text is None:
        return
    name = _provider(provider)
    FIRST_TOKEN_SECONDS.labels(name, model).observe(first_text - started)
    if ended is not None:
        REPLY_SECONDS.labels(name, model).observe(ended - started)


def reply_ended(settings: Settings, provider: str, model: str, outcome: str, code: str, usage: Usage) -> None:
    """A reply was stored (as complete, cancelled or failed) with what it spent."""
    if not metrics.collecting:
        return
    name = _provider(provider)
    REPLIES.labels(name, metrics.bounded(outcome, OUTCOMES), metrics.bounded(code or "none", CODES)).inc()
    if usage.input_tokens:
        TOKENS.labels(name, model, "input").inc(usage.input_tokens)
    if usage.output_tokens:
        TOKENS.labels(name, model, "output").inc(usage.output_tokens)
    price = _prices(tuple(settings.ai_token_prices)).get(model)
    if price is not None:
        COST.labels(name, model).inc((usage.input_tokens * price[0] + usage.output_tokens * price[1]) / 1_000_000)


def reply_refused(code: str) -> None:
    """A reply was refused before it started (``ai_busy``, a spent budget, a deleted message)."""
    if metrics.collecting:
        REPLIES.labels("none", "refused", metrics.bounded(code, REFUSALS)).inc()
