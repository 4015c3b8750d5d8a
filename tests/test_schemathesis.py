"""Schemathesis drives every REST operation of ``/schema/openapi.json`` against a real
``python -m server serve`` node, anonymously and with an admin's bearer token, with
data that fits the schema (positive) and data that breaks it (negative).

Checks: no 5xx, every status is documented, the Content-Type is the documented one
and the body conforms to the documented schema. Bounded: a few examples per
operation, no shrinking, so the whole file runs in about a minute.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from litestar import Litestar
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.domain.tables.accounts import Role, User
from server.foundation.settings import Settings
from tests.support.community import Community
from tests.support.nodes import WebNode
from tests.support.oidc import running_provider
from tests.support.stripe_standin import running_standin

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = {GenerationMode.POSITIVE: 3, GenerationMode.NEGATIVE: 2}
# Operations that would end the signed-in session the authenticated pass runs with.
ENDS_THE_SESSION = {
    ("POST", "/api/v1/auth/logout"),
    ("DELETE", "/api/v1/users/me"),
    ("PATCH", "/api/v1/users/me/password"),
}


@dataclass
class Report:
    """What a pass ran: cases per operation, status codes seen, and every failed check."""

    operations: set[str] = field(default_factory=set)
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def fuzz(base_url: str, headers: dict[str, str], skip: set[tuple[str, str]]) -> Report:
    """Run schemathesis over every operation (blocking: called in a thread)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json")
    report = Report()
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in skip:
            continue
        report.operations.add(operation.label)
        for mode, examples in EXAMPLES.items():
            try:
                _fuzz_operation(operation, mode, examples, base_url, headers, report)
            except Unsatisfiable:
                # An operation without parameters or body has no invalid input to generate.
                assert mode is GenerationMode.NEGATIVE, operation.label
    return report


def _fuzz_operation(
    operation: APIOperation,
    mode: GenerationMode,
    examples: int,
    base_url: str,
    headers: dict[str, str],
    report: Report,
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        report.cases += 1
        report.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                report.failures.append(
                    f"{operation.label} [{mode.value}] -> {response.status_code}: {failure.title}: "
                    f"{failure.message[:300]} | {case.as_curl_command(headers=headers)[:300]}"
                )

    run()


@pytest.fixture
async def node(app: Litestar, settings: Settings) -> AsyncIterator[WebNode]:
    """A real node (on the database ``app`` just emptied) with this worker's object store, and
    billing and Google sign-in pointed at the local stand-ins, so that those routes run their
    code instead of answering 503."""
    web = WebNode(settings)
    callback = f"{web.url}/api/v1/auth/google/callback"
    async with running_standin() as stripe, running_provider(redirect_uris=(callback,)) as google:
        web.env.update(
            # The lexical embedder: loading the local model would take most of the time budget.
            EMBEDDINGS_PROVIDER="hashing",
            S3_ENDPOINT=settings.s3_endpoint or "",
            S3_ACCESS_KEY=settings.s3_access_key or "",
            S3_SECRET_KEY=settings.s3_secret_key or "",
            S3_BUCKET=settings.s3_bucket,
            STRIPE_SECRET_KEY=stripe.api_key,
            STRIPE_WEBHOOK_SECRET=stripe.webhook_secret,
            STRIPE_API_BASE=stripe.url,
            GOOGLE_CLIENT_ID=google.client_id,
            GOOGLE_CLIENT_SECRET=google.client_secret,
            GOOGLE_ISSUER=google.issuer,
            GOOGLE_AUTHORIZATION_ENDPOINT=google.authorization_endpoint,
            GOOGLE_TOKEN_ENDPOINT=google.token_endpoint,
            GOOGLE_JWKS_URI=google.jwks_uri,
            GOOGLE_REDIRECT_URI=callback,
        )
        await web.start()
        try:
            yield web
        finally:
            await web.stop()


def _summary(name: str, report: Report) -> str:
    return (
        f"{name}: {len(report.operations)} operations, {report.cases} cases, "
        f"{sum(n for status, n in report.statuses.items() if status >= 500)} 5xx, "
        f"statuses {dict(sorted(report.statuses.items()))}, {len(report.failures)} failures"
    )


async def test_every_operation_answers_anonymous_callers_as_documented(node: WebNode) -> None:
    report = await asyncio.to_thread(fuzz, node.url, {}, set())
    print(_summary("anonymous", report))
    assert len(report.operations) >= 100 and report.cases >= 400, _summary("anonymous", report)
    assert not report.failures, "\n".join([_summary("anonymous", report), *report.failures[:40]])


async def test_every_operation_answers_a_signed_in_admin_as_documented(node: WebNode, community: Community) -> None:
    admin = await community.user(f"admin-{uuid.uuid4().hex[:8]}@example.com")
    await User.update({User.role: Role.admin}).where(User.id == uuid.UUID(admin.id))
    report = await asyncio.to_thread(fuzz, node.url, admin.headers, ENDS_THE_SESSION)
    print(_summary("admin", report))
    assert len(report.operations) >= 100 and report.cases >= 400, _summary("admin", report)
    assert not report.failures, "\n".join([_summary("admin", report), *report.failures[:40]])


async def test_the_document_describes_every_error_as_a_problem(client: httpx.AsyncClient) -> None:
    """Litestar's default 400 (``{status_code, detail, extra}`` JSON) is replaced, and every
    operation that takes input documents the 422 its validation answers."""
    document = (await client.get("/schema/openapi.json")).json()
    problem = {"$ref": "#/components/schemas/ProblemDetails"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in {"get", "put", "post", "patch", "delete"}:
                continue
            responses = operation["responses"]
            for status, response in responses.items():
                if int(status) >= 400:
                    assert response["content"] == {"application/problem+json": {"schema": problem}}, (path, method)
            if operation.get("parameters") or operation.get("requestBody"):
                assert "422" in responses, (path, method)
            if operation.get("requestBody"):
                assert "400" in responses, (path, method)
