"""Make the generated OpenAPI document tell the truth about error answers, and read well.

Litestar documents a ``400`` on every route with parameters as its own
``{status_code, detail, extra}`` JSON, while this app answers every error as an
RFC 9457 problem (``server.http.problems``) and refuses invalid input with ``422``.
:func:`document_problems` rewrites the generated document once, at start-up, so
that clients and schema-driven tests (``tests/test_schemathesis.py``) see what
the server really sends. :func:`document_summaries` gives every operation a
summary a client developer can scan (the first sentence of its handler's
docstring, which Litestar otherwise replaces by the handler's name, e.g.
"Apply"), and :data:`TAGS` describes each group.
"""

from __future__ import annotations

from http import HTTPStatus

from litestar.openapi.spec import OpenAPI, OpenAPIMediaType, OpenAPIResponse, Operation, Reference, Tag

from server.http.problems import PROBLEM_MEDIA_TYPE, ProblemDetails

METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
SUMMARY_CHARS = 120

TAGS = [
    Tag(
        name="auth",
        description="Sign up, verify the email, sign in, refresh and revoke tokens, reset a password, Google.",
    ),
    Tag(name="users", description="Your own account: profile, password, activity, deletion."),
    Tag(name="categories", description="The categories mentors and lounges are filed under."),
    Tag(name="mentors", description="Mentor profiles, and applying to become one."),
    Tag(name="lounges", description="Group rooms: create, join, members and moderation, and their messages."),
    Tag(name="threads", description="One-to-one threads with the AI coach, and their messages."),
    Tag(name="notes", description="Your notes, searchable and grounding the coach's answers."),
    Tag(name="files", description="Uploads (attachments, knowledge files, avatars) and downloads."),
    Tag(name="capsules", description="Time capsules: messages to yourself that unlock later."),
    Tag(name="notifications", description="In-app notifications and their read state."),
    Tag(
        name="devices",
        description="Phones registered for push notifications (APNs, FCM) while no socket is connected, and the push log.",
    ),
    Tag(name="billing", description="Plans, checkout and the customer portal (Stripe), usage."),
    Tag(name="cms", description="Public pages and FAQs."),
    Tag(name="compliance", description="Your data export."),
    Tag(
        name="admin",
        description="Administration: mentor applications, users and roles, categories, CMS, stats, audit log, push log.",
    ),
    Tag(name="health", description="Liveness and readiness probes."),
]
LITESTAR_DEFAULT_ERROR_MEDIA_TYPE = "application/json"


def _problem(status: int, reference: Reference, description: str | None = None) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description or HTTPStatus(status).phrase,
        content={PROBLEM_MEDIA_TYPE: OpenAPIMediaType(schema=reference)},
    )


def _document_operation(operation: Operation, reference: Reference) -> None:
    responses = operation.responses = operation.responses or {}
    parameters = operation.parameters or []
    # Litestar's automatic 400 stands for its ValidationException, which this app answers 422;
    # a real 400 comes only from a body that is not JSON (or nested too deeply to decode).
    litestar_400 = responses.get("400")
    if isinstance(litestar_400, OpenAPIResponse) and LITESTAR_DEFAULT_ERROR_MEDIA_TYPE in (litestar_400.content or {}):
        del responses["400"]
    if operation.request_body is not None:
        responses.setdefault("400", _problem(400, reference, "The body is not JSON, or is nested too deeply"))
    if parameters or operation.request_body is not None:
        responses.setdefault("422", _problem(422, reference, "A parameter or body field is invalid (named in detail)"))
    if any(getattr(parameter, "param_in", None) == "path" for parameter in parameters):
        responses.setdefault("404", _problem(404, reference, "No such resource, or a path parameter of the wrong type"))
    if operation.security:
        responses.setdefault("401", _problem(401, reference, "Missing, expired or revoked bearer token"))
    for status, response in responses.items():
        if int(status) >= 400 and isinstance(response, OpenAPIResponse):
            response.content = {PROBLEM_MEDIA_TYPE: OpenAPIMediaType(schema=reference)}


def document_problems(openapi: OpenAPI) -> None:
    """Every error status of every operation is ``application/problem+json`` with the
    problem schema, and each operation lists the 400/401/404/422 its inputs can cause."""
    schemas = openapi.components.schemas or {}
    name = ProblemDetails.__name__
    if name not in schemas:
        raise RuntimeError(f"no route documents {name}; use server.http.problems.problem_responses")
    reference = Reference(ref=f"#/components/schemas/{name}")
    for path_item in (openapi.paths or {}).values():
        for method in METHODS:
            if (operation := getattr(path_item, method, None)) is not None:
                _document_operation(operation, reference)


def first_sentence(text: str) -> str:
    """Up to the first full stop outside parentheses and code, on one line, at most
    :data:`SUMMARY_CHARS` characters (cut at a word, with …)."""
    text = " ".join(text.split())
    depth, code, end = 0, False, len(text)
    for i, char in enumerate(text):
        if char == "`":
            code = not code
        elif not code and char in "([{":
            depth += 1
        elif not code and char in ")]}":
            depth = max(0, depth - 1)
        elif char == "." and not code and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            end = i
            break
    sentence = text[:end]
    if len(sentence) > SUMMARY_CHARS:
        sentence = sentence[: SUMMARY_CHARS - 1].rsplit(" ", 1)[0] + "…"
    return sentence


def document_summaries(openapi: OpenAPI) -> None:
    """An operation whose summary is Litestar's default (its handler's name) gets the first
    sentence of its description instead; one without a description is a bug, reported."""
    missing: list[str] = []
    for path, path_item in (openapi.paths or {}).items():
        for method in METHODS:
            operation = getattr(path_item, method, None)
            if operation is None:
                continue
            description = (operation.description or "").strip()
            if not description:
                missing.append(f"{method.upper()} {path}")
                continue
            if operation.summary is None or " " not in operation.summary:
                operation.summary = first_sentence(description)
    if missing:
        raise RuntimeError(f"operations without a docstring: {', '.join(missing)}")
