"""Typed settings read from the environment, validated once at start-up.

Every field maps to the upper-cased environment variable of the same name
(``database_url`` ← ``DATABASE_URL``). ``.env.example`` documents each one;
``tests/test_settings.py`` keeps the two in step.
"""

from __future__ import annotations

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

    # Redis. Empty: the dev launcher starts an embedded Valkey server.
    redis_url: str | None = None
    # Namespace for every key, pub/sub channel and the arq queue of this deployment.
    redis_prefix: str = "lounges"

    # HTTP.
    cors_allow_origins: list[str] = msgspec.field(default_factory=list)
    compression_minimum_size: PositiveInt = 1024
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    public_base_url: str = "http://127.0.0.1:8000"

    # Mail. Without SMTP_HOST mail is written to MAIL_OUTBOX_DIR and logged.
    smtp_host: str | None = None
    smtp_port: Port = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = True
    smtp_timeout: PositiveFloat = 10.0
    mail_from: str = "Lounges <no-reply@lounges.local>"
    mail_outbox_dir: str = "var/outbox"

    # Background worker.
    worker_health_check_interval: PositiveInt = 10
    worker_max_jobs: PositiveInt = 20

    def __post_init__(self) -> None:
        if self.database_url is not None:
            _check_url("DATABASE_URL", self.database_url, {"postgres", "postgresql"})
        if self.redis_url is not None:
            _check_url("REDIS_URL", self.redis_url, {"redis", "rediss", "unix"})
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")

    @property
    def is_production(self) -> bool:
        return self.env == "production"


def _check_url(variable: str, url: str, schemes: set[str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"{variable} must be a {'/'.join(sorted(schemes))} URL, got scheme {parts.scheme!r}")
    if parts.scheme != "unix" and not (parts.hostname or "host=" in parts.query):
        raise ValueError(f"{variable} has no host")


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
    text, _, path = message.rpartition(" - at `$.")
    if path:
        name = path.rstrip("`").split("[")[0].upper()
        return f"invalid {name}: {text}"
    return f"invalid configuration: {message}"
