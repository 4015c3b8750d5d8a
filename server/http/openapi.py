"""Make the generated OpenAPI document tell the truth about error answers.

Litestar documents a ``400`` on every route with parameters as its own
``{status_code, detail, extra}`` JSON, while this app answers every error as an
RFC 9457 problem (``server.http.problems``) and refuses invalid input with ``422``.
:func:`document_problems` rewrites the generated document once, at start-up, so
that clients and schema-driven tests (``tests/test_schemathesis.py``) see what
the server really sends.
"""

from __future__ import annotations

from http import HTTPStatus

from litestar.openapi.spec import OpenAPI, OpenAPIMediaType, OpenAPIResponse, Operation, Reference

from server.http.problems import PROBLEM_MEDIA_TYPE, ProblemDetails

METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
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
