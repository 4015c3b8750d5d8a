"""Typed settings read from the environment, validated once at start-up.

Every field maps to the upper-cased environment variable of the same name
(``database_url`` ← ``DATABASE_URL``). ``.env.example`` documents each one;
``tests/test_settings.py`` keeps the two in step.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class SettingsError(Exception):
    """Raised when the environment holds a bad value; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob of the service. Defaults are the embedded development stack's."""

    env: Literal["development", "test", "production"] = "development"
    host: str = "127.0.0.1"
    port: Port = 8000
    # Where embedded services keep their data when no URL is given.
    data_dir: str = "var"

    # PostgreSQL (with pgvector). Empty: the dev launcher starts an embedded server.
    database_url: str | None = None
    db_pool_min_size: Annotated[int, msgspec.Meta(ge=0)] = 1
    db_pool_max_size: PositiveInt = 10
    db_command_timeout: PositiveFloat = 30.0

    # Redis: arq's job queue, the coach's reply leases, sign-in flows, node heartbeats. One
    # server (arq needs one). Empty: the dev launcher starts an embedded Valkey server.
    redis_url: str | None = None
    # The realtime Redis: channel publications (sharded pub/sub), history caches, presence,
    # online records, rate limits, the control bus: everything whose load grows with traffic.
    # A ``redis+cluster://host:port`` (or ``rediss+cluster://``) URL names a Redis Cluster
    # (any one node; the others are discovered). Empty: REDIS_URL's server. Redis 7+ either way.
    realtime_redis_url: str | None = None
    # Namespace for every key, pub/sub channel and the arq queue of this deployment.
    redis_prefix: Annotated[str, msgspec.Meta(pattern=r"^[^{}]+$")] = "lounges"

    # HTTP.
    cors_allow_origins: list[str] = msgspec.field(default_factory=list)
    # Reverse proxies (IP addresses or networks, or "*") whose X-Forwarded-For / -Proto are
    # believed. Empty: none, the peer address is the client's (anyone could forge the headers).
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    compression_minimum_size: PositiveInt = 1024
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    # Where this server is reached from outside (links in mail); unset: http://HOST:PORT.
    public_base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/\s]+")] | None = None
    # Where the app opens links from mail (a mobile deep link / universal link base);
    # unset: the server's own minimal pages complete verification and resets in a browser.
    app_link_base: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+")] | None = None

    # Mail. Without SMTP_HOST mail is written to MAIL_OUTBOX_DIR and logged.
    smtp_host: str | None = None
    smtp_port: Port = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = True
    smtp_timeout: PositiveFloat = 10.0
    mail_from: str = "Lounges <no-reply@lounges.local>"
    mail_outbox_dir: str = "var/outbox"

    # Access tokens: JWT (HS256, pinned) signed with the first of JWT_KEYS
    # ("kid:secret,kid:secret"); the others still verify, for key rotation.
    # Empty outside production: an ephemeral key is generated (tokens die with the process).
    jwt_keys: list[str] = msgspec.field(default_factory=list)
    jwt_issuer: str = "lounges"
    jwt_audience: str = "lounges-api"
    access_token_ttl: PositiveInt = 900
    refresh_token_ttl: PositiveInt = 30 * 24 * 3600
    # Seconds a process keeps what authenticating a session read (server/domain/accounts/session_cache.py);
    # changes reach every process at once over the control bus, this bounds a lost event. 0: off.
    auth_cache_seconds: Annotated[float, msgspec.Meta(ge=0, le=60)] = 5.0
    email_verification_ttl: PositiveInt = 48 * 3600
    password_reset_ttl: PositiveInt = 3600
    # Sign-in, register, forgot-password and verify: "count/seconds" per client IP (every attempt)
    # and per account (sign-in: failed attempts on one account from one IP; see do_login).
    auth_rate_limit_ip: str = "30/60"
    auth_rate_limit_account: str = "10/900"
    # Failed sign-ins on one account from all IPs; past it only IPs it signed in from before may try.
    auth_login_failures_account: str = "100/3600"

    # Google sign-in (OpenID Connect, authorization code + PKCE). Empty client id: disabled.
    google_client_id: str | None = None
    google_client_secret: str | None = None
    google_issuer: str = "https://accounts.google.com"
    google_authorization_endpoint: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_token_endpoint: str = "https://oauth2.googleapis.com/token"
    google_jwks_uri: str = "https://www.googleapis.com/oauth2/v3/certs"
    google_redirect_uri: str = "http://127.0.0.1:8000/api/v1/auth/google/callback"

    # Messages.
    message_max_length: PositiveInt = 4000

    # The AI coach (the providers are configured below).
    ai_free_monthly_tokens: PositiveInt = 200_000
    ai_max_concurrent_per_user: PositiveInt = 2
    ai_delta_interval_ms: PositiveInt = 50
    ai_context_tokens: PositiveInt = 6000
    ai_rag_passages: Annotated[int, msgspec.Meta(ge=0, le=20)] = 4
    # A running reply's lease: a reply whose worker stopped renewing it this long is ended as `worker_lost`.
    ai_stream_lease_seconds: Annotated[float, msgspec.Meta(ge=1, le=120)] = 5.0

    # Realtime gateway (/connection/websocket).
    ws_max_frame_bytes: PositiveInt = 65536
    ws_max_subscriptions: PositiveInt = 128
    ws_outbound_max_bytes: PositiveInt = 1024 * 1024
    ws_ping_interval: PositiveInt = 25
    ws_pong_timeout: PositiveInt = 10
    ws_connect_timeout: PositiveInt = 10
    ws_expired_close_delay: Annotated[int, msgspec.Meta(ge=0)] = 25
    # The cyclic garbage collector's thresholds (``gc.set_threshold``) for serve and worker.
    # CPython's 700,10,10 collects the young generation so often under load that objects
    # living a few milliseconds reach the old one, whose full passes then run every few
    # seconds and stall every socket for up to a second at 10,000 sockets (docs/scaling.md).
    gc_thresholds: str = "50000,10,10"
    # Connections per process to each Redis server (queue and realtime); commands beyond them
    # wait for a free one. A Redis Cluster's client keeps its own pools per shard.
    redis_max_connections: Annotated[int, msgspec.Meta(ge=4, le=10_000)] = 64
    # Longest a socket command may take (a stalled database or Redis): past it, error 108.
    ws_command_timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    # Failed commands (client errors) one socket may send per 10 s before it is closed with 3509.
    ws_max_errors: PositiveInt = 100
    publish_rate_limit: str = "30/10"
    history_cache_size: PositiveInt = 500
    history_cache_ttl: PositiveInt = 24 * 3600
    recovery_max_publications: PositiveInt = 1000
    presence_ttl: PositiveInt = 15
    drain_seconds: Annotated[float, msgspec.Meta(ge=0)] = 5.0

    # AI providers. AI_PROVIDERS is the fallback order; a provider without its API
    # key is left out ("offline" needs none). OpenAI-compatible servers (Ollama,
    # vLLM, llama.cpp) go through OPENAI_BASE_URL with any non-empty OPENAI_API_KEY.
    ai_providers: Annotated[
        str, msgspec.Meta(pattern=r"^\s*(openai|anthropic|offline)\s*(,\s*(openai|anthropic|offline)\s*)*$")
    ] = "openai,anthropic,offline"
    openai_api_key: str | None = None
    openai_base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/\s]+")] = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    anthropic_api_key: str | None = None
    anthropic_base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/\s]+")] = "https://api.anthropic.com"
    anthropic_model: str = "claude-3-5-haiku-latest"
    # Per request: connect/read timeout (also the longest silence between streamed
    # chunks) and the SDK's own retries (429, 5xx, connection errors) before falling back.
    # The offline coach's pace: one word per delta at this rate (0: all at once).
    ai_offline_words_per_second: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 25.0
    ai_timeout_seconds: PositiveFloat = 30.0
    ai_max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 1
    # Cap on a reply's output tokens (a prompt may ask for fewer).
    ai_max_output_tokens: PositiveInt = 800

    # Embeddings (notes search, the coach's retrieval). auto: openai when OPENAI_API_KEY is
    # set and embeddings go to api.openai.com (or EMBEDDINGS_OPENAI_BASE_URL is set), else the
    # local all-MiniLM-L6-v2 when installed (extra "embeddings"), else "hashing": a
    # deterministic lexical fallback (feature hashing), not a semantic model.
    embeddings_provider: Literal["auto", "openai", "minilm", "hashing"] = "auto"
    # OpenAI-compatible server for embeddings only; empty: OPENAI_BASE_URL.
    embeddings_openai_base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/\s]+")] | None = None
    embeddings_batch_size: Annotated[int, msgspec.Meta(ge=1, le=2048)] = 64
    # Chunks: at most this many characters, the next repeating this many of the last.
    embeddings_chunk_chars: Annotated[int, msgspec.Meta(ge=200, le=8000)] = 800
    embeddings_chunk_overlap: Annotated[int, msgspec.Meta(ge=0, le=2000)] = 120
    # Retrieval ranks each part (own notes, the lounge's files) exactly up to this many chunks, else HNSW.
    retrieval_exact_max_chunks: PositiveInt = 10000

    # Time capsules and notifications.
    # Furthest ahead a capsule may be sealed, in days (25 years), and capsules per user.
    capsule_max_days_ahead: PositiveInt = 9131
    capsule_max_per_user: PositiveInt = 500
    # Capsules the unlock job opens per transaction (it repeats until none is due).
    capsule_unlock_batch_size: PositiveInt = 200
    # Notification kinds mailed unless a user's notification_prefs say otherwise
    # ("email": false stops all notification mail; "email:<kind>": true/false per kind).
    notification_email_kinds: list[str] = msgspec.field(
        default_factory=lambda: [
            "mentor.approved",
            "mentor.rejected",
            "lounge.invite",
            "lounge.request_approved",
            "capsule.unlocked",
            "payment.succeeded",
            "payment.failed",
            "ai.budget_nearly_used",
        ]
    )
    # Read notifications older than this many days are deleted by a daily job (0: kept forever).
    notification_retention_days: Annotated[int, msgspec.Meta(ge=0)] = 180
    # Tell a user once a month when they have spent this percentage of their AI allowance.
    ai_budget_warning_percent: Annotated[int, msgspec.Meta(ge=1, le=100)] = 80

    # Push notifications to sleeping mobile apps (docs/push.md). Neither APNS_KEY nor
    # FCM_SERVICE_ACCOUNT set: nothing is queued for push and the rest of the product runs.
    # APNs token-based provider auth: the .p8 key's PEM text ("\n" may stand for newlines),
    # its key id (the JWT's kid) and the team id (its iss).
    apns_key: str | None = None
    apns_key_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{10}$")] | None = None
    apns_team_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{10}$")] | None = None
    # Bundle ids (APNs topics) devices may register with; empty: any.
    apns_bundle_ids: list[str] = msgspec.field(default_factory=list)
    apns_base_url: Annotated[str, msgspec.Meta(pattern=r"^https://[^/\s]+/?$")] = "https://api.push.apple.com"
    apns_sandbox_base_url: Annotated[str, msgspec.Meta(pattern=r"^https://[^/\s]+/?$")] = (
        "https://api.sandbox.push.apple.com"
    )
    # A PEM file of CA certificates to trust for APNs instead of the system's (an intercepting
    # egress proxy; the tests' stand-in). Empty: the usual public roots.
    apns_ca_file: str | None = None
    # FCM HTTP v1: a Firebase service account's JSON key (its project_id is the default project).
    fcm_service_account: str | None = None
    fcm_api_base: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/\s]+/?$")] = "https://fcm.googleapis.com"
    # What is pushed unless a user's notification_prefs say otherwise ("push": false stops all,
    # "push:<kind>": true/false per kind, "mute:<lounge id>": true silences a lounge's messages).
    push_kinds: list[str] = msgspec.field(
        default_factory=lambda: [
            "lounge.message",
            "lounge.mention",
            "thread.coach_reply",
            "capsule.unlocked",
            "lounge.invite",
            "lounge.request_approved",
            "lounge.request_declined",
        ]
    )
    # Pushes one device may get per minute; more are dropped (and logged as rate_limited).
    push_max_per_device_per_minute: PositiveInt = 10
    # Devices one user may register; registering another drops the least recently registered.
    push_max_devices_per_user: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    # Attempts per push when APNs/FCM fail transiently (backoff 5 s, 10 s, 20 s ... at most 5 min).
    push_max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5
    # Seconds per request to APNs, FCM and Google's token endpoint.
    push_timeout: PositiveFloat = 10.0
    # The push log (every attempt) is kept this many days (0: kept forever).
    push_log_retention_days: Annotated[int, msgspec.Meta(ge=0)] = 30

    # Object storage and files. S3-compatible server (MinIO in production), e.g.
    # http://minio:9000. Empty: the dev launcher starts an embedded SeaweedFS S3 server;
    # elsewhere the file routes answer 503 storage_not_configured.
    s3_endpoint: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/\s]+/?$")] | None = None
    # Endpoint written into presigned download links (what clients can reach); empty: S3_ENDPOINT.
    s3_public_endpoint: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/\s]+/?$")] | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"
    s3_bucket: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")] = "lounges"
    # Seconds to connect to the object store, and of silence while reading from it.
    s3_timeout: PositiveFloat = 30.0
    # Largest upload in bytes, and the types accepted (checked from the content, not the client's header).
    upload_max_bytes: PositiveInt = 25 * 1024 * 1024
    upload_allowed_types: list[str] = msgspec.field(
        default_factory=lambda: [
            "image/jpeg",
            "image/png",
            "image/gif",
            "image/webp",
            "image/heic",
            "application/pdf",
            "text/plain",
            "text/markdown",
            "audio/mpeg",
            "audio/mp4",
            "audio/ogg",
            "audio/x-wav",
            "video/mp4",
            "video/quicktime",
            "video/webm",
        ]
    )
    # Uploads reach the object store in parts of this many bytes (S3's minimum is 5 MiB):
    # the most of one upload held in memory.
    upload_part_bytes: Annotated[int, msgspec.Meta(ge=5 * 1024 * 1024, le=512 * 1024 * 1024)] = 8 * 1024 * 1024
    # Seconds a presigned download link stays valid.
    presigned_url_ttl: Annotated[int, msgspec.Meta(ge=1, le=7 * 24 * 3600)] = 300
    # Seconds after which an upload that never finished, or an attachment, avatar or capsule
    # file that nothing uses, is deleted by the cleanup job.
    orphan_file_ttl: PositiveInt = 24 * 3600
    # Seconds a finished data export (POST /api/v1/users/me/exports) is kept.
    export_retention: PositiveInt = 7 * 24 * 3600

    # Billing (Stripe). Empty STRIPE_SECRET_KEY: every /billing route answers 503
    # billing_not_configured and the rest of the product runs (paid lounges stay closed,
    # mentors' lounge limits are not enforced since nobody could buy more).
    stripe_secret_key: Annotated[str, msgspec.Meta(pattern=r"^(sk|rk)_\S+$")] | None = None
    # Signing secret of the webhook endpoint (POST /api/v1/billing/webhook); empty: it answers 503.
    stripe_webhook_secret: Annotated[str, msgspec.Meta(pattern=r"^whsec_\S+$")] | None = None
    # Seconds a webhook signature's timestamp may be old before it is refused (replay window).
    stripe_webhook_tolerance: PositiveInt = 300
    # Stripe's API base URL (the tests point it at a local stand-in).
    stripe_api_base: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/\s]+/?$")] = "https://api.stripe.com"
    # Seconds per Stripe request, and the SDK's retries (same idempotency key) on network errors.
    stripe_timeout: PositiveFloat = 20.0
    stripe_max_network_retries: Annotated[int, msgspec.Meta(ge=0, le=5)] = 2
    # Where Stripe Checkout sends the payer back ({CHECKOUT_SESSION_ID} is filled in by Stripe).
    billing_success_url: Annotated[str, msgspec.Meta(pattern=r"^https?://\S+$")] = (
        "http://127.0.0.1:8000/billing/success?session_id={CHECKOUT_SESSION_ID}"
    )
    billing_cancel_url: Annotated[str, msgspec.Meta(pattern=r"^https?://\S+$")] = "http://127.0.0.1:8000/billing/cancel"
    # Stripe price ids `python -m server seed-plans` gives the pro and team plans
    # (its --pro-price/--team-price arguments win); empty: the plan is listed but not for sale.
    stripe_price_pro: str | None = None
    stripe_price_team: str | None = None
    # Non-archived lounges a mentor without a subscription may run (when billing is configured);
    # seeds the free plan, whose row is the free tier once seeded.
    billing_free_max_lounges: Annotated[int, msgspec.Meta(ge=0)] = 1

    # Prometheus metrics (docs/operations.md#metrics). METRICS_ENABLED=false collects nothing.
    metrics_enabled: bool = True
    # Bearer token a scraper sends to GET /metrics on the web port; unset: /metrics answers 404.
    metrics_token: Annotated[str, msgspec.Meta(min_length=16)] | None = None
    # The worker's own exporter: bound to METRICS_HOST:WORKER_METRICS_PORT (unset: none). No
    # token: the bind address is its protection (keep it on loopback or a private network).
    metrics_host: str = "127.0.0.1"
    worker_metrics_port: Port | None = None
    # USD per million input/output tokens, per model, for the coach's cost counter:
    # "model=input/output" comma-separated (e.g. gpt-4o-mini=0.15/0.6). A model not listed costs nothing.
    ai_token_prices: list[str] = msgspec.field(default_factory=list)

    # Background worker.
    worker_health_check_interval: PositiveInt = 10
    worker_max_jobs: PositiveInt = 20
    # On SIGTERM a worker takes no new job and lets running ones (coach replies) finish this long.
    worker_shutdown_grace_seconds: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 30

    # OpenTelemetry traces (server/foundation/tracing.py, docs/operations.md#tracing): off unless
    # OTEL_EXPORTER_OTLP_ENDPOINT names an OTLP/HTTP collector (spans go to <it>/v1/traces).
    # The SDK's own OTEL_* variables (sampler, batching, headers, timeout) apply as usual.
    otel_exporter_otlp_endpoint: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/\s]+")] | None = None
    # service.name of this process's spans; empty: lounges-web for web nodes, lounges-worker for workers.
    otel_service_name: str | None = None

    def __post_init__(self) -> None:
        if self.database_url is not None:
            _check_url("DATABASE_URL", self.database_url, {"postgres", "postgresql"})
        if self.redis_url is not None:
            _check_url("REDIS_URL", self.redis_url, {"redis", "rediss", "unix"}, cluster_hint=True)
        if self.realtime_redis_url is not None:
            _check_url(
                "REALTIME_REDIS_URL",
                self.realtime_redis_url,
                {"redis", "rediss", "unix", "redis+cluster", "rediss+cluster"},
            )
        for proxy in self.trusted_proxies:
            if proxy != "*":
                try:
                    ipaddress.ip_network(proxy, strict=False)
                except ValueError:
                    raise ValueError(f"TRUSTED_PROXIES: {proxy!r} is not an IP address or network") from None
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        for name in (
            "auth_rate_limit_ip",
            "auth_rate_limit_account",
            "auth_login_failures_account",
            "publish_rate_limit",
        ):
            parse_rate(name.upper(), getattr(self, name))
        parse_gc_thresholds(self.gc_thresholds)
        for entry in self.jwt_keys:
            kid, sep, secret = entry.partition(":")
            if not sep or not kid or len(secret) < 32:
                raise ValueError("JWT_KEYS entries must be 'kid:secret' with a secret of at least 32 characters")
        if self.env == "production" and not self.jwt_keys:
            raise ValueError("JWT_KEYS must be set in production")
        if self.apns_key is not None:
            if "-----BEGIN PRIVATE KEY-----" not in apns_key_pem(self.apns_key):
                raise ValueError("APNS_KEY must be the PEM text of the .p8 key (-----BEGIN PRIVATE KEY----- ...)")
            if self.apns_key_id is None or self.apns_team_id is None:
                raise ValueError("APNS_KEY needs APNS_KEY_ID and APNS_TEAM_ID")
        if self.fcm_service_account is not None:
            fcm_service_account_info(self.fcm_service_account)
        token_prices(self.ai_token_prices)

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def push_configured(self) -> bool:
        """Whether any push service is configured (otherwise nothing is queued for push)."""
        return self.apns_key is not None or self.fcm_service_account is not None


def apns_key_pem(value: str) -> str:
    """``APNS_KEY`` as PEM text: a literal ``\\n`` stands for a newline (one-line env files)."""
    return value.replace("\\n", "\n").strip() + "\n"


_SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "token_uri", "project_id")


def fcm_service_account_info(value: str) -> dict[str, str]:
    """``FCM_SERVICE_ACCOUNT`` decoded: a service account's JSON key with the fields FCM needs."""
    try:
        info = msgspec.json.decode(value)
    except msgspec.DecodeError:
        raise ValueError("FCM_SERVICE_ACCOUNT must be a service account's JSON key") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValueError('FCM_SERVICE_ACCOUNT must be a JSON key of "type": "service_account"')
    missing = [name for name in _SERVICE_ACCOUNT_FIELDS if not isinstance(info.get(name), str) or not info[name]]
    if missing:
        raise ValueError(f"FCM_SERVICE_ACCOUNT lacks {', '.join(missing)}")
    return info


def token_prices(entries: list[str]) -> dict[str, tuple[float, float]]:
    """``AI_TOKEN_PRICES`` as model -> (USD per million input tokens, per million output tokens)."""
    prices: dict[str, tuple[float, float]] = {}
    for entry in entries:
        model, sep, pair = entry.rpartition("=")
        given, slash, taken = pair.partition("/")
        try:
            price = (float(given), float(taken))
        except ValueError:
            price = (-1.0, -1.0)
        if not (sep and model and slash) or min(price) < 0 or not all(map(math.isfinite, price)):
            raise ValueError(
                f"AI_TOKEN_PRICES entries must be 'model=input/output' (USD per million tokens), got {entry!r}"
            )
        prices[model] = price
    return prices


def _check_url(variable: str, url: str, schemes: set[str], *, cluster_hint: bool = False) -> None:
    parts = urlsplit(url)
    if cluster_hint and parts.scheme.endswith("+cluster"):
        raise ValueError(
            f"{variable} must name one Redis server (arq's queue needs one); name a cluster in REALTIME_REDIS_URL"
        )
    if parts.scheme not in schemes:
        raise ValueError(f"{variable} must be a {'/'.join(sorted(schemes))} URL, got scheme {parts.scheme!r}")
    if parts.scheme != "unix" and not (parts.hostname or "host=" in parts.query):
        raise ValueError(f"{variable} has no host")


def parse_rate(variable: str, spec: str) -> tuple[int, int]:
    """``"30/60"`` → ``(30, 60)``: at most 30 events per 60 seconds."""
    count, sep, seconds = spec.partition("/")
    if not (sep and count.isdigit() and seconds.isdigit() and int(count) > 0 and int(seconds) > 0):
        raise ValueError(f"{variable} must look like 'count/seconds', e.g. '30/60'")
    return int(count), int(seconds)


def parse_gc_thresholds(spec: str) -> tuple[int, int, int]:
    """``"50000,10,10"`` → ``(50000, 10, 10)``, the arguments of ``gc.set_threshold``."""
    parts = spec.split(",")
    if len(parts) != 3 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise ValueError("GC_THRESHOLDS must be three positive integers, e.g. '50000,10,10'")
    first, second, third = (int(part) for part in parts)
    return first, second, third


_LIST_FIELDS = {f.name for f in msgspec.structs.fields(Settings) if f.type == list[str]}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``environ`` (default: ``os.environ``).

    Raises :class:`SettingsError` with one line naming the offending variable.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for field in msgspec.structs.fields(Settings):
        value = environ.get(field.name.upper())
        if value is None or value == "":
            continue
        raw[field.name] = [v.strip() for v in value.split(",") if v.strip()] if field.name in _LIST_FIELDS else value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(str(exc))) from None


def _explain(message: str) -> str:
    """Turn msgspec's ``... - at `$.field``` into a line naming the variable."""
    text, at, path = message.rpartition(" - at `$.")
    if at:
        name = path.rstrip("`").split("[")[0].upper()
        return f"invalid {name}: {text}"
    return f"invalid configuration: {message}"
