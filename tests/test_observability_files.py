"""The observability files in ``ops/`` against the code that makes the series they query.

``ops/prometheus/alerts.yml`` and ``ops/grafana/dashboards/lounges.json`` name series,
labels and label values in PromQL; nothing would tell when a metric is renamed, a label
dropped or a result code changed, except these tests: every ``lounges_*`` series they
use must be one the code defines (its ``_total``/``_bucket``/``_sum``/``_count`` form),
with the labels their selectors, groupings, legends and annotations use, and the label
values they match must be values the code records. The rules are also run through
``promtool`` (Debian's ``prometheus`` package; ``.ci/run`` installs it): ``check rules``,
``check config`` and ``test rules`` on scenarios below, so the thresholds fire when they
should and stay quiet when they should; the dashboard's queries go through its parser too.
Without promtool those fail (never skip), as the suite does without Node or Chromium. No
service is needed.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA_DIR = ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "lounges.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "lounges.yml"
COMPOSE = ROOT / "compose.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"

METRIC_MODULES = (
    "server.foundation.metrics",
    "server.foundation.database",  # binds the pool gauge's states
    "server.gateway.metrics",
    "server.http.metrics",
    "server.domain.ai.metrics",
    "server.domain.llm.metrics",
    "server.domain.knowledge.metrics",
    "server.domain.billing.metrics",
    "workers.metrics",
)
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series
# Defined but deliberately not on the dashboard (each says why).
NOT_ON_DASHBOARD = {
    "lounges_worker_jobs_started_total": "finished (by outcome) shows the same jobs once they end",
}


# -- what the code defines -------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str  # as described: a counter's without _total
    type: str
    labels: frozenset[str]


@dataclass
class Catalogue:
    families: dict[str, Family]
    series: dict[str, tuple[Family, frozenset[str]]]  # sample name -> its family and labels
    values: dict[tuple[str, str], frozenset[str]]  # (family, label) -> the values it takes
    jobs: frozenset[str]

    def family_of(self, series: str) -> Family:
        return self.series[series][0]


class _QueueRedis:
    """Stands in for Redis under ``workers.metrics.QueueDepth`` (its gauges are made at scrape)."""

    def pipeline(self, transaction: bool = True) -> _QueueRedis:
        return self

    def __enter__(self) -> _QueueRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def zcard(self, key: str) -> None:
        return None

    def zcount(self, key: str, low: object, high: object) -> None:
        return None

    def execute(self) -> list[int]:
        return [3, 1]


def _families() -> dict[str, Family]:
    families: dict[str, Family] = {}
    for name in METRIC_MODULES:
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, MetricWrapperBase):
                (described,) = value.describe()
                families[described.name] = Family(described.name, described.type, frozenset(value._labelnames))
    from workers.metrics import QueueDepth

    depth = QueueDepth.__new__(QueueDepth)  # its collector without a Redis connection
    depth._redis = _QueueRedis()  # type: ignore[assignment]
    depth._queue = "queue"
    for family in depth.collect():
        families[family.name] = Family(family.name, family.type, frozenset())
    return families


def _bound_values() -> dict[tuple[str, str], set[str]]:
    """Label values of the children the code binds up front (seen in this process's registry)."""
    from workers.main import CRON_JOBS, FUNCTIONS
    from workers.metrics import metered

    metered(FUNCTIONS), metered(CRON_JOBS)  # what a worker does at start: binds every outcome
    values: dict[tuple[str, str], set[str]] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            for label, value in sample.labels.items():
                values.setdefault((family.name, label), set()).add(value)
    return values


def _routes() -> set[str]:
    from server.app import create_app
    from server.foundation.settings import Settings

    return {route.path for route in create_app(Settings()).routes}


def _catalogue() -> Catalogue:
    from server.domain.ai import metrics as ai
    from server.domain.billing import metrics as billing
    from server.domain.llm import metrics as llm
    from server.gateway import metrics as gateway
    from server.gateway import protocol
    from server.http import metrics as http

    families = _families()
    series: dict[str, tuple[Family, frozenset[str]]] = {}
    for family in families.values():
        if family.type == "counter":
            series[family.name + "_total"] = (family, family.labels)
        elif family.type == "histogram":
            series[family.name + "_bucket"] = (family, family.labels | {"le"})
            series[family.name + "_sum"] = (family, family.labels)
            series[family.name + "_count"] = (family, family.labels)
        else:
            series[family.name] = (family, family.labels)

    bound = _bound_values()
    codes = {str(value) for name, value in vars(protocol).items() if name.startswith("ERROR_")}
    providers = {*llm.PROVIDERS, "none", "other"}
    types = {*billing.HANDLED_TYPES, "other", "unknown"}
    routes = _routes() | {http.UNMATCHED}
    values: dict[tuple[str, str], set[str]] = {
        ("lounges_gateway_connections", "encoding"): set(gateway.ENCODINGS),
        ("lounges_gateway_commands", "result"): {"ok", "disconnect", *codes},
        ("lounges_gateway_commands", "method"): {*gateway.METHODS, "unknown"},
        ("lounges_gateway_command_seconds", "method"): {*gateway.METHODS, "unknown"},
        ("lounges_http_requests", "route"): routes,
        ("lounges_http_request_seconds", "route"): routes,
        ("lounges_http_requests", "method"): {*http.METHODS, "other"},
        ("lounges_http_request_seconds", "method"): {*http.METHODS, "other"},
        ("lounges_coach_replies", "outcome"): set(ai.OUTCOMES),
        ("lounges_coach_replies", "code"): {*ai.CODES, *ai.REFUSALS, "other"},
        ("lounges_llm_provider_errors", "code"): {*llm.CODES, "other"},
        ("lounges_billing_webhook_events", "outcome"): {*billing.RECEIVED, "other"},
        ("lounges_billing_events_processed", "outcome"): {*billing.PROCESSED, "other"},
    }
    for name in ("lounges_coach_first_token_seconds", "lounges_coach_reply_seconds", "lounges_coach_replies"):
        values[(name, "provider")] = providers
    for name in ("lounges_coach_tokens", "lounges_coach_cost_usd", "lounges_llm_provider_errors"):
        values[(name, "provider")] = providers
    values[("lounges_llm_fallbacks", "provider")] = providers
    for name in (
        "lounges_billing_webhook_events",
        "lounges_billing_events_processed",
        "lounges_billing_event_lag_seconds",
    ):
        values[(name, "type")] = types
    # Labels whose every value the code binds at import (or a worker at start).
    for key in (
        ("lounges_gateway_gap_fills", "reason"),
        ("lounges_gateway_publications_received", "source"),
        ("lounges_gateway_recoveries", "recovered"),
        ("lounges_db_pool_connections", "state"),
        ("lounges_worker_jobs_finished", "outcome"),
        ("lounges_worker_jobs_finished", "function"),
    ):
        assert key in bound, f"{key} is no longer bound up front: give the test its values another way"
        values[key] = bound[key]
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = frozenset(job["job_name"] for job in scrape["scrape_configs"])
    return Catalogue(families, series, {key: frozenset(found) for key, found in values.items()}, jobs)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return _catalogue()


# -- what the files use ------------------------------------------------------------------------

SELECTOR = re.compile(r"\b(lounges_[a-z0-9_]+|up|ALERTS)\b(\s*\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
TEMPLATE_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
ANNOTATION_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")


@dataclass
class Query:
    where: str  # "alert X" / "panel Y"
    expr: str
    label_refs: set[str] = field(default_factory=set)  # labels a legend or annotation prints


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row's


def _queries() -> list[Query]:
    queries = []
    for rule in _alert_rules():
        refs = set(ANNOTATION_LABEL.findall(json.dumps(rule.get("annotations", {}))))
        queries.append(Query(f"alert {rule['alert']} ({rule['labels']['severity']})", rule["expr"], refs))
    for panel in _panels(_dashboard()):
        for target in panel.get("targets", []):
            refs = set(TEMPLATE_LABEL.findall(target.get("legendFormat", "")))
            queries.append(Query(f"panel {panel['title']!r} {target['refId']}", target["expr"], refs))
    return queries


def _alternatives(operator: str, value: str) -> list[str]:
    """The values a matcher names: itself (= and !=) or its regex's alternatives (=~ and !~)."""
    return [value] if operator in ("=", "!=") else value.split("|")


def _problems(query: Query, catalogue: Catalogue) -> list[str]:
    problems = []
    known_labels = set(TARGET_LABELS)
    selectors = SELECTOR.findall(query.expr)
    for name, braces in selectors:
        matchers = MATCHER.findall(braces)
        if name in ("up", "ALERTS"):  # Prometheus's own
            known_labels |= {label for label, _, _ in matchers}
            for label, operator, value in matchers:
                if label == "job":
                    for wanted in _alternatives(operator, value):
                        if wanted not in catalogue.jobs:
                            problems.append(f"job {wanted!r} is no job of {PROMETHEUS_CONFIG.name}")
            continue
        if name not in catalogue.series:
            problems.append(f"{name} is not a series the code defines")
            continue
        family, labels = catalogue.series[name]
        known_labels |= labels
        for label, operator, value in matchers:
            if label not in labels | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r} (it has {sorted(labels)})")
                continue
            allowed = catalogue.values.get((family.name, label))
            if label == "job":
                allowed = catalogue.jobs
            if allowed is None:
                continue
            for wanted in _alternatives(operator, value):
                pattern = re.compile(wanted if operator in ("=~", "!~") else re.escape(wanted))
                if not any(pattern.fullmatch(candidate) for candidate in allowed):
                    problems.append(f"{name}{{{label}{operator}{value!r}}}: {wanted!r} matches no value it takes")
    if selectors and any(name not in ("up", "ALERTS") for name, _ in selectors):
        for group in GROUPING.findall(query.expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                if label not in known_labels:
                    problems.append(f"groups by {label!r}, a label of none of its series")
    for label in query.label_refs:
        if label not in known_labels:
            problems.append(f"prints the label {label!r}, which none of its series has")
    return [f"{query.where}: {problem}" for problem in problems]


# -- the series --------------------------------------------------------------------------------


def test_every_series_and_label_the_alerts_and_dashboard_use_is_one_the_code_defines(catalogue: Catalogue) -> None:
    queries = _queries()
    assert len(queries) > 60
    problems = [problem for query in queries for problem in _problems(query, catalogue)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_renamed_series_a_missing_label_and_an_unknown_value(catalogue: Catalogue) -> None:
    """The check above is only as good as its parsing: it must see these mistakes."""
    cases = {
        "rate(lounges_gateway_deliveries[5m])": "not a series",  # the counter without _total
        "lounges_gateway_fanout_seconds": "not a series",  # a histogram has no bare series
        'sum(lounges_http_requests_total{path="/x"})': "no label 'path'",
        "sum by (route) (lounges_gateway_connections)": "groups by 'route'",
        'lounges_coach_replies_total{outcome="errored"}': "matches no value",
        'lounges_gateway_commands_total{result=~"100|999"}': "'999' matches no value",
        'lounges_http_requests_total{route="/readyz"}': "matches no value",
        'up{job="lounges-webs"}': "no job",
    }
    for expr, expected in cases.items():
        found = _problems(Query("case", expr), catalogue)
        assert any(expected in problem for problem in found), (expr, found)
    assert _problems(Query("case", "sum(lounges_gateway_connections)", {"encodings"}), catalogue)
    assert not _problems(
        Query("case", 'sum by (encoding) (lounges_gateway_connections{encoding="json"})', {"encoding"}), catalogue
    )


def test_the_dashboard_shows_every_series_the_code_defines(catalogue: Catalogue) -> None:
    used = {name for query in _queries() if query.where.startswith("panel") for name, _ in SELECTOR.findall(query.expr)}
    shown = {catalogue.family_of(name).name for name in used if name in catalogue.series}
    missing = {
        name for name, family in catalogue.families.items() if name.startswith("lounges_") and name not in shown
    } - {name.removesuffix("_total") for name in NOT_ON_DASHBOARD}
    assert not missing, f"series on no panel of {DASHBOARD.name}: {sorted(missing)}"


# -- the alert rules ---------------------------------------------------------------------------

ANCHOR = re.compile(r"docs/operations\.md#([a-z0-9-]+)")


def _anchors() -> set[str]:
    headings = re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_alert_waits_has_a_severity_and_says_what_to_check() -> None:
    rules = _alert_rules()
    assert len(rules) >= 20
    anchors = _anchors()
    seen = set()
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Lounges[A-Za-z0-9]+", name), name
        assert "for" in rule and re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert (name, rule["labels"]["severity"]) not in seen, f"{name} twice at one severity"
        seen.add((name, rule["labels"]["severity"]))
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and "\n" not in annotations["summary"], name
        description = annotations["description"]
        assert len(description) > 80, name
        links = ANCHOR.findall(description)
        assert links, f"{name}: its description links no section of docs/operations.md"
        for anchor in links:
            assert anchor in anchors, f"{name}: docs/operations.md has no section #{anchor}"
    # Each alert is explained in the runbook table of docs/operations.md.
    runbook = OPERATIONS.read_text().split("### Dashboards and alerts", 1)[1]
    for name in {rule["alert"] for rule in rules}:
        assert f"`{name}`" in runbook, f"{name} is not in docs/operations.md#dashboards-and-alerts"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not on PATH: install Debian's prometheus package (.ci/run does)")
    return found


def _run(*args: str | Path) -> str:
    result = subprocess.run([str(arg) for arg in args], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_accepts_the_rules_and_the_scrape_config(tmp_path: Path) -> None:
    promtool = _promtool()
    assert "SUCCESS" in _run(promtool, "check", "rules", ALERTS)
    # check config wants the token file to exist: a copy pointing at a stand-in file.
    token = tmp_path / "metrics-token"
    token.write_text("a-token-of-sixteen-characters")
    config = PROMETHEUS_CONFIG.read_text()
    assert "/run/lounges/metrics-token" in config
    (tmp_path / "prometheus.yml").write_text(config.replace("/run/lounges/metrics-token", str(token)))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    assert "SUCCESS" in _run(promtool, "check", "config", tmp_path / "prometheus.yml")


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel's PromQL, Grafana's interval variables filled in, as a recording rule."""
    promtool = _promtool()
    rules = []
    for panel in _panels(_dashboard()):
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$__range", "3h")
            assert "$" not in expr, f"{panel['title']}: a variable promtool cannot fill in"
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr})
    document = {"groups": [{"name": "dashboard", "rules": rules}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(document))
    assert f"SUCCESS: {len(rules)} rules found" in _run(promtool, "check", "rules", tmp_path / "dashboard.yml")


# Scenarios for `promtool test rules` (its format; series values "a+bxN": N steps of b from a,
# one step a minute; "_" no sample). Alerts are compared by their labels: the test copies the
# rules without annotations, whose wording is not under test here.
WEB = {"job": "lounges-web", "instance": "web:8000"}
WORKER = {"job": "lounges-worker", "instance": "10.0.0.7:9464"}


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    rendered = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{rendered}}}", "values": values}


def _histogram(name: str, bounds: dict[str, str], **labels: str) -> list[dict[str, str]]:
    """A histogram's bucket series (bounds: le -> values) and its _count (the +Inf bucket's)."""
    series = [_series(f"{name}_bucket", values, le=le, **labels) for le, values in bounds.items()]
    return [*series, _series(f"{name}_count", bounds["+Inf"], **labels)]


def _expect(alert: str, at: str, *fired: dict[str, str]) -> dict[str, Any]:
    return {"alertname": alert, "eval_time": at, "exp_alerts": [{"exp_labels": labels} for labels in fired]}


SCENARIOS: list[dict[str, Any]] = [
    {  # a web node that stops answering; no worker at all
        "input_series": [_series("up", "1 1 0x20", **WEB)],
        "alert_rule_test": [
            _expect("LoungesWebTargetDown", "3m"),
            _expect("LoungesWebTargetDown", "5m", {"severity": "critical", **WEB}),
            _expect("LoungesNoWorkerScraped", "4m"),
            _expect("LoungesNoWorkerScraped", "6m", {"severity": "critical"}),
        ],
    },
    {  # 2% of requests fail (warning, not critical); /ready's 503s count apart
        "input_series": [
            _series(
                "lounges_http_requests_total", "0+5880x40", method="GET", route="/api/v1/users/me", status="200", **WEB
            ),
            _series(
                "lounges_http_requests_total", "0+120x40", method="GET", route="/api/v1/users/me", status="500", **WEB
            ),
            _series("lounges_http_requests_total", "0+6x40", method="GET", route="/ready", status="503", **WEB),
        ],
        "alert_rule_test": [
            _expect("LoungesHTTP5xxRatioHigh", "8m"),
            _expect("LoungesHTTP5xxRatioHigh", "20m", {"severity": "warning"}),
            _expect("LoungesNotReady", "5m", {"severity": "critical", "instance": WEB["instance"]}),
        ],
    },
    {  # a few 5xx on a quiet site: below the minimum count
        "input_series": [
            _series(
                "lounges_http_requests_total", "0+10x40", method="GET", route="/api/v1/users/me", status="200", **WEB
            ),
            _series(
                "lounges_http_requests_total", "0+0.5x40", method="GET", route="/api/v1/users/me", status="500", **WEB
            ),
        ],
        "alert_rule_test": [_expect("LoungesHTTP5xxRatioHigh", "30m")],
    },
    {  # slow GET route: p99 in the 1-2.5 s bucket; uploads are as slow and left out
        "input_series": [
            *_histogram(
                "lounges_http_request_seconds",
                {"0.5": "0+60x30", "1.0": "0+60x30", "2.5": "0+600x30", "+Inf": "0+600x30"},
                method="GET",
                route="/api/v1/lounges",
                **WEB,
            ),
            *_histogram(
                "lounges_http_request_seconds",
                {"0.5": "0x30", "1.0": "0x30", "2.5": "0+600x30", "+Inf": "0+600x30"},
                method="POST",
                route="/api/v1/chat/upload",
                **WEB,
            ),
        ],
        "alert_rule_test": [
            _expect(
                "LoungesHTTPLatencyP99High",
                "15m",
                {"severity": "warning", "method": "GET", "route": "/api/v1/lounges"},
            )
        ],
    },
    {  # fan-out p99 ~0.5 s: the warning (100 ms), not the critical (1 s)
        "input_series": _histogram(
            "lounges_gateway_fanout_seconds",
            {"0.1": "0x30", "0.25": "0x30", "0.5": "0+600x30", "1.0": "0+600x30", "+Inf": "0+600x30"},
            **WEB,
        ),
        "alert_rule_test": [
            _expect("LoungesGatewayFanoutP99High", "10m"),
            _expect("LoungesGatewayFanoutP99High", "20m", {"severity": "warning", "instance": WEB["instance"]}),
        ],
    },
    {  # 50 slow consumers in 5 minutes among 2,000 sockets (1%: 20)
        "input_series": [
            _series("lounges_gateway_connections", "2000x20", encoding="json", **WEB),
            _series("lounges_gateway_slow_consumer_disconnects_total", "0+10x20", **WEB),
        ],
        "alert_rule_test": [_expect("LoungesSlowConsumerDisconnectsSpiking", "12m", {"severity": "warning"})],
    },
    {  # the same 50 among 10,000 sockets (1%: 100) is no spike
        "input_series": [
            _series("lounges_gateway_connections", "10000x20", encoding="json", **WEB),
            _series("lounges_gateway_slow_consumer_disconnects_total", "0+10x20", **WEB),
        ],
        "alert_rule_test": [_expect("LoungesSlowConsumerDisconnectsSpiking", "12m")],
    },
    {  # 108s during a PostgreSQL stall
        "input_series": [
            _series("lounges_gateway_commands_total", "0+600x20", method="publish", result="ok", **WEB),
            _series("lounges_gateway_commands_total", "0+60x20", method="publish", result="108", **WEB),
            _series("lounges_gateway_commands_total", "0+600x20", method="subscribe", result="103", **WEB),
        ],
        "alert_rule_test": [_expect("LoungesGatewayCommandsFailing", "12m", {"severity": "warning"})],
    },
    {  # catch-ups finding publications with no relink: broadcasts are being lost
        "input_series": [
            _series("lounges_gateway_gap_fills_total", "0+1x40", reason="catch_up", **WEB),
            _series("lounges_gateway_gap_fills_total", "0x40", reason="gap", **WEB),
            _series("lounges_gateway_pubsub_relinks_total", "0x40", **WEB),
        ],
        "alert_rule_test": [
            _expect("LoungesPubSubGapFillsRecurring", "35m", {"severity": "warning", "instance": WEB["instance"]}),
            _expect("LoungesPubSubRelinking", "35m"),
        ],
    },
    {  # a flapping Redis: relinks every few minutes, each followed by its catch-up
        "input_series": [
            _series("lounges_gateway_gap_fills_total", "0+1x40", reason="catch_up", **WEB),
            _series("lounges_gateway_pubsub_relinks_total", "0+1x40", **WEB),
        ],
        "alert_rule_test": [
            _expect("LoungesPubSubGapFillsRecurring", "35m"),
            _expect("LoungesPubSubRelinking", "35m", {"severity": "warning", "instance": WEB["instance"]}),
        ],
    },
    {  # a pool at 19 of 20 in the web processes
        "input_series": [
            _series("lounges_db_pool_connections", "19x20", state="in_use", **WEB),
            _series("lounges_db_pool_connections", "1x20", state="idle", **WEB),
            _series("lounges_db_pool_max_connections", "20x20", **WEB),
        ],
        "alert_rule_test": [_expect("LoungesDBPoolSaturated", "15m", {"severity": "warning", **WEB})],
    },
    {  # two workers read the same backlog of 80 due jobs: one alert
        "input_series": [
            _series("lounges_worker_queue_due_jobs", "80x20", **WORKER),
            _series("lounges_worker_queue_due_jobs", "80x20", job="lounges-worker", instance="10.0.0.8:9464"),
        ],
        "alert_rule_test": [_expect("LoungesWorkerQueueBacklog", "15m", {"severity": "warning"})],
    },
    {  # one function fails a sixth of its jobs, another never
        "input_series": [
            _series(
                "lounges_worker_jobs_finished_total", "0+10x30", function="send_mail", outcome="succeeded", **WORKER
            ),
            _series("lounges_worker_jobs_finished_total", "0+2x30", function="send_mail", outcome="failed", **WORKER),
            _series(
                "lounges_worker_jobs_finished_total", "0+10x30", function="send_push", outcome="succeeded", **WORKER
            ),
            _series("lounges_worker_jobs_finished_total", "0x30", function="send_push", outcome="failed", **WORKER),
        ],
        "alert_rule_test": [
            _expect("LoungesWorkerJobsFailing", "20m", {"severity": "warning", "function": "send_mail"})
        ],
    },
    {  # replies interrupted by a deploy are no failure
        "input_series": [
            _series(
                "lounges_coach_replies_total", "0+10x30", provider="openai", outcome="complete", code="none", **WORKER
            ),
            _series(
                "lounges_coach_replies_total",
                "0+10x30",
                provider="openai",
                outcome="failed",
                code="interrupted",
                **WORKER,
            ),
        ],
        "alert_rule_test": [_expect("LoungesCoachRepliesFailing", "25m")],
    },
    {  # ... replies no provider could answer are
        "input_series": [
            _series(
                "lounges_coach_replies_total", "0+10x30", provider="openai", outcome="complete", code="none", **WORKER
            ),
            _series(
                "lounges_coach_replies_total",
                "0+2x30",
                provider="none",
                outcome="failed",
                code="all_providers_failed",
                **WORKER,
            ),
        ],
        "alert_rule_test": [_expect("LoungesCoachRepliesFailing", "25m", {"severity": "warning"})],
    },
    {  # first tokens at 5-7.5 s from one provider
        "input_series": _histogram(
            "lounges_coach_first_token_seconds",
            {"2.0": "0x40", "5.0": "0x40", "7.5": "0+6x40", "+Inf": "0+6x40"},
            provider="anthropic",
            model="claude-3-5-haiku-latest",
            **WORKER,
        ),
        "alert_rule_test": [
            _expect("LoungesCoachFirstTokenSlow", "35m", {"severity": "warning", "provider": "anthropic"})
        ],
    },
    {  # a revoked key
        "input_series": [
            _series("lounges_llm_provider_errors_total", "0+1x30", provider="openai", code="auth_failed", **WORKER)
        ],
        "alert_rule_test": [
            _expect(
                "LoungesLLMProviderErrors",
                "20m",
                {"severity": "warning", "provider": "openai", "code": "auth_failed"},
            )
        ],
    },
    {  # a wrong webhook secret: every Stripe delivery refused
        "input_series": [
            _series(
                "lounges_billing_webhook_events_total", "0+1x30", type="unknown", outcome="invalid_signature", **WEB
            )
        ],
        "alert_rule_test": [
            _expect("LoungesStripeWebhookRejected", "20m", {"severity": "warning", "outcome": "invalid_signature"})
        ],
    },
    {  # the first failed billing event: its series appears at 1 (increase() alone misses it)
        "input_series": [
            _series(
                "lounges_billing_events_processed_total", "_x10 1x40", type="invoice.paid", outcome="failed", **WORKER
            ),
            _series(
                "lounges_billing_events_processed_total", "0+1x50", type="invoice.paid", outcome="applied", **WORKER
            ),
        ],
        "alert_rule_test": [
            _expect("LoungesBillingEventsFailing", "9m"),
            _expect(
                "LoungesBillingEventsFailing",
                "12m",
                {"severity": "warning", "type": "invoice.paid", "outcome": "failed"},
            ),
            _expect("LoungesBillingEventsFailing", "45m"),
        ],
    },
    {  # Stripe events applied ten minutes late
        "input_series": _histogram(
            "lounges_billing_event_lag_seconds",
            {"300.0": "0x60", "900.0": "0+1x60", "+Inf": "0+1x60"},
            type="invoice.paid",
            **WORKER,
        ),
        "alert_rule_test": [_expect("LoungesBillingEventLagHigh", "50m", {"severity": "warning"})],
    },
]


def test_the_alerts_fire_and_stay_quiet_as_their_thresholds_say(tmp_path: Path) -> None:
    promtool = _promtool()
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    tested = {case["alertname"] for scenario in SCENARIOS for case in scenario["alert_rule_test"]}
    assert len(tested) >= 15
    tests = [{"interval": "1m", **scenario} for scenario in SCENARIOS]
    document = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    assert "SUCCESS" in _run(promtool, "test", "rules", tmp_path / "alerts_test.yml")


# -- the dashboard, Grafana's provisioning and compose.yaml ------------------------------------


def test_the_dashboard_reads_the_provisioned_prometheus_through_its_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 39
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["name"] == "DS_PROMETHEUS" and variable["query"] == "prometheus"
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus" and variable["current"]["value"] == source["uid"]
    ids, panels = set(), list(_panels(dashboard))
    for panel in panels:
        assert panel["id"] not in ids, panel["title"]
        ids.add(panel["id"])
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24 and box["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["expr"].strip(), panel["title"]
    titles = " / ".join(panel["title"].lower() for panel in panels)
    for wanted in (
        "sockets by encoding",
        "subscriptions",
        "deliveries/s",
        "publications received/s",
        "fan-out",
        "commands/s by result",
        "command errors",
        "disconnects/s by code",
        "requests/s by route",
        "p99 by route",
        "5xx",
        "db pool in use",
        "acquire wait",
        "redis errors",
        "queue depth",
        "job outcomes",
        "time to first token",
        "tokens",
        "cost",
        "webhook",
        "event lag",
    ):
        assert wanted in titles, f"no panel about {wanted!r}"


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"][name]
    return service


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        if host.startswith("./"):
            mounts[container] = host.removeprefix("./")
    return mounts


def test_compose_profile_mounts_what_the_files_expect() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    prometheus, grafana = _service(compose, "prometheus"), _service(compose, "grafana")
    for service in (prometheus, grafana):
        assert service["profiles"] == ["observability"]
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])  # loopback only
    assert not any("profiles" in _service(compose, name) for name in ("web", "worker", "postgres", "redis"))

    # Prometheus: ops/prometheus as its config directory; the token written into its tmpfs.
    assert _mounts(prometheus)["/etc/prometheus"] == "ops/prometheus"
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert scrape["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    token_file = Path(jobs["lounges-web"]["authorization"]["credentials_file"])
    assert str(token_file.parent) in prometheus["tmpfs"]
    script = prometheus["command"][0]
    assert f"> {token_file}" in script and "--config.file=/etc/prometheus/prometheus.yml" in script
    # ... scraping the ports web and worker serve on.
    web, worker = _service(compose, "web"), _service(compose, "worker")
    assert jobs["lounges-web"]["static_configs"][0]["targets"] == ["web:8000"] and "8000:8000" in web["ports"]
    assert "METRICS_TOKEN" in web["environment"]
    (resolver,) = jobs["lounges-worker"]["dns_sd_configs"]
    assert resolver["names"] == ["worker"] and resolver["port"] == int(worker["environment"]["WORKER_METRICS_PORT"])
    assert worker["environment"]["METRICS_HOST"] == "0.0.0.0" and "ports" not in worker  # never published

    # Grafana: provisioning and dashboards where the provider looks.
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "ops/grafana/provisioning"
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert mounts[provider["options"]["path"]] == "ops/grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"


def test_the_settings_compose_gives_web_and_worker_are_valid() -> None:
    """METRICS_HOST, WORKER_METRICS_PORT and a METRICS_TOKEN as compose.yaml passes them."""
    from server.foundation.settings import load_settings

    compose = yaml.safe_load(COMPOSE.read_text())
    worker = _service(compose, "worker")["environment"]
    settings = load_settings(
        {
            "METRICS_HOST": worker["METRICS_HOST"],
            "WORKER_METRICS_PORT": worker["WORKER_METRICS_PORT"],
            "METRICS_TOKEN": "a-token-of-sixteen-characters",
        }
    )
    assert settings.metrics_host == "0.0.0.0" and settings.worker_metrics_port == 9464
    assert settings.metrics_token == "a-token-of-sixteen-characters"
    assert load_settings({"METRICS_TOKEN": ""}).metrics_token is None  # compose's default: /metrics 404
