"""The model providers' Prometheus series: failures and fallbacks (the replies' own series
are the coach's, :mod:`server.domain.ai.metrics`). Labels: the provider's name (``openai``,
``anthropic``, ``offline``) and the stable error code of :mod:`server.domain.llm.providers`."""

from __future__ import annotations

from prometheus_client import Counter

from server.foundation import metrics

PROVIDERS = ("openai", "anthropic", "offline")
CODES = (
    "provider_unavailable",
    "rate_limited",
    "auth_failed",
    "bad_request",
    "stream_interrupted",
    "provider_error",
)

PROVIDER_ERRORS = Counter(
    "lounges_llm_provider_errors_total",
    "Model provider failures, by provider and code (stream_interrupted: after the first token)",
    ["provider", "code"],
)
FALLBACKS = Counter(
    "lounges_llm_fallbacks_total",
    "Replies handed to the next provider because this one failed before its first token",
    ["provider"],
)


def provider_failed(provider: str, code: str, *, falling_back: bool) -> None:
    if not metrics.collecting:
        return
    name = metrics.bounded(provider, PROVIDERS)
    PROVIDER_ERRORS.labels(name, metrics.bounded(code, CODES)).inc()
    if falling_back:
        FALLBACKS.labels(name).inc()
