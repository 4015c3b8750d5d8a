"""Settings: read from the environment, documented, and failing with one clear line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from server.foundation.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_embedded_stack() -> None:
    settings = load_settings({})
    assert settings.database_url is None and settings.redis_url is None
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)


def test_values_are_converted_from_strings() -> None:
    settings = load_settings(
        {"PORT": "9001", "SMTP_STARTTLS": "false", "CORS_ALLOW_ORIGINS": "https://a.example, https://b.example"}
    )
    assert settings.port == 9001
    assert settings.smtp_starttls is False
    assert settings.cors_allow_origins == ["https://a.example", "https://b.example"]


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"REDIS_URL": "redis+cluster://127.0.0.1:7000"}, "REALTIME_REDIS_URL"),  # arq needs one server
        ({"REALTIME_REDIS_URL": "http+cluster://127.0.0.1:7000"}, "REALTIME_REDIS_URL"),
        ({"REDIS_PREFIX": "a{b}"}, "REDIS_PREFIX"),  # braces would make every key one hash tag
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"GC_THRESHOLDS": "700,10"}, "GC_THRESHOLDS"),
        ({"GC_THRESHOLDS": "0,10,10"}, "GC_THRESHOLDS"),  # 0 would turn the collector off
        ({"REDIS_MAX_CONNECTIONS": "2"}, "REDIS_MAX_CONNECTIONS"),  # the pub/sub and a command need more
        ({"APNS_KEY": "not a key", "APNS_KEY_ID": "ABC123DEFG", "APNS_TEAM_ID": "TEAM123456"}, "APNS_KEY"),
        ({"APNS_KEY": "-----BEGIN PRIVATE KEY-----\\nMIG...\\n-----END PRIVATE KEY-----"}, "APNS_KEY_ID"),
        ({"APNS_KEY_ID": "short"}, "APNS_KEY_ID"),
        ({"FCM_SERVICE_ACCOUNT": "{not json"}, "FCM_SERVICE_ACCOUNT"),
        ({"FCM_SERVICE_ACCOUNT": '{"type": "service_account", "project_id": "p"}'}, "FCM_SERVICE_ACCOUNT"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    assert names in str(caught.value)
    assert "\n" not in str(caught.value)


def test_env_example_documents_every_variable() -> None:
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    declared = {field.name.upper() for field in msgspec.structs.fields(Settings)}
    assert documented == declared


def test_env_example_defaults_match_the_code() -> None:
    example = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (ROOT / ".env.example").read_text(), re.M))
    assert load_settings(example) == load_settings({})


@pytest.mark.parametrize("command", ["serve", "worker", "migrate"])
def test_bad_configuration_stops_start_up_with_one_line(command: str) -> None:
    env = {**os.environ, "DATABASE_URL": "postgres//oops", "REDIS_URL": "redis://127.0.0.1:6379/0"}
    result = subprocess.run(
        [sys.executable, "-m", "server", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL" in lines[0] and "Traceback" not in result.stderr
