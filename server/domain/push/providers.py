"""The push services this process is configured for, made once and kept with its state."""

from __future__ import annotations

from server.domain.push.apns import ApnsClient
from server.domain.push.fcm import FcmClient
from server.foundation.state import AppState

_EXTENSION = "push.providers"


class Providers:
    """APNs and FCM clients (``None``: not configured)."""

    def __init__(self, state: AppState) -> None:
        settings = state.settings
        self.apns = ApnsClient(settings) if settings.apns_key else None
        self.fcm = FcmClient(settings) if settings.fcm_service_account else None

    def of(self, platform: str) -> ApnsClient | FcmClient | None:
        return self.apns if platform == "apns" else self.fcm

    async def close(self) -> None:
        for client in (self.apns, self.fcm):
            if client is not None:
                await client.close()


def providers_of(state: AppState) -> Providers:
    """This process's clients, made on first use."""
    providers = state.extensions.get(_EXTENSION)
    if providers is None:
        providers = state.extensions[_EXTENSION] = Providers(state)
    assert isinstance(providers, Providers)
    return providers


async def close_providers(state: AppState) -> None:
    """Close the clients' connections (the worker's shutdown)."""
    providers = state.extensions.pop(_EXTENSION, None)
    if isinstance(providers, Providers):
        await providers.close()
