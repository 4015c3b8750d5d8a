"""The providers the settings configure (``AI_PROVIDERS`` and the API keys), in fallback order.

Kept apart from :mod:`server.domain.llm.providers` (the interface every provider implements),
which the providers themselves import.
"""

from __future__ import annotations

from server.domain.llm.offline_provider import OfflineProvider
from server.domain.llm.providers import Provider
from server.foundation.settings import Settings

PROVIDER_NAMES = ("openai", "anthropic", "offline")
_built: dict[tuple[object, ...], list[Provider]] = {}


def provider_order(spec: str) -> list[str]:
    """``AI_PROVIDERS`` as an ordered list of known names, without repeats, ``offline`` moved last."""
    names: list[str] = []
    for raw in spec.split(","):
        name = raw.strip().lower()
        if name in PROVIDER_NAMES and name not in names:
            names.append(name)
    if "offline" in names:  # it always answers, so anything after it would never be tried
        names.remove("offline")
        names.append("offline")
    return names


def build_providers(settings: Settings) -> list[Provider]:
    """The providers of ``AI_PROVIDERS`` in order, leaving out those whose API key is missing.

    With no key at all only ``offline`` remains (when listed). The result is cached
    per configuration, so the SDK clients (and their connection pools) are reused.
    """
    key = (
        settings.ai_providers,
        settings.openai_api_key,
        settings.openai_base_url,
        settings.openai_model,
        settings.anthropic_api_key,
        settings.anthropic_base_url,
        settings.anthropic_model,
        settings.ai_timeout_seconds,
        settings.ai_max_retries,
        settings.ai_max_output_tokens,
        settings.ai_offline_words_per_second,
    )
    built = _built.get(key)
    if built is None:
        built = []
        for name in provider_order(settings.ai_providers):
            if name == "openai" and settings.openai_api_key:
                # The SDKs are imported only when configured: each takes seconds to import.
                from server.domain.llm.openai_provider import OpenAIProvider

                built.append(OpenAIProvider.from_settings(settings))
            elif name == "anthropic" and settings.anthropic_api_key:
                # Likewise imported only when configured.
                from server.domain.llm.anthropic_provider import AnthropicProvider

                built.append(AnthropicProvider.from_settings(settings))
            elif name == "offline":
                built.append(OfflineProvider(settings.ai_offline_words_per_second))
        _built[key] = built
    return list(built)
