"""HTTP transport for ``/api/v1/chat/upload`` and ``/api/v1/files``: streaming uploads,
metadata with presigned download links, deletion."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import InternalServerException
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Redirect
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT, HTTP_307_TEMPORARY_REDIRECT

from server.domain.accounts.services import Principal
from server.domain.files import services
from server.domain.files.schemas import FileOut, FilePage, UploadPurpose
from server.domain.tables.files import FilePurpose
from server.foundation.errors import BadRequest
from server.foundation.state import AppState
from server.http.params import Cursor, text_query
from server.http.problems import problem_responses

State = NamedDependency[AppState]
Caller = NamedDependency[Principal]
Limit = Annotated[int, QueryParameter(ge=1, le=200)]
Filename = Annotated[str | None, text_query(min_length=1, max_length=255)]


async def _body(request: Request[Any, Any, Any]) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except InternalServerException as exc:  # Litestar's word for a client gone mid-body
        raise BadRequest("the upload was interrupted", code="upload_interrupted") from exc


@dataclass
class UploadOperation(Operation):
    """Documents the upload's body, which the handler streams itself."""

    def __post_init__(self) -> None:
        binary = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
        self.request_body = RequestBody(
            required=True,
            description="The file: raw bytes (any Content-Type), or multipart/form-data with one part named file.",
            content={
                "application/octet-stream": OpenAPIMediaType(schema=binary),
                "multipart/form-data": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.OBJECT, properties={"file": binary}, required=["file"])
                ),
            },
        )


class UploadController(Controller):
    """``POST /chat/upload``: one file per request, streamed to the object store."""

    path = "/chat/upload"
    tags = ["files"]
    security = [{"BearerToken": []}]

    @post(
        "",
        status_code=HTTP_201_CREATED,
        request_max_body_size=None,  # UPLOAD_MAX_BYTES is enforced while streaming
        operation_class=UploadOperation,
        responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
    )
    async def upload(
        self,
        request: Request[Any, Any, Any],
        app_state: State,
        principal: Caller,
        purpose: FromQuery[UploadPurpose] = UploadPurpose.attachment,
        lounge_id: FromQuery[uuid.UUID | None] = None,
        filename: Filename = None,
    ) -> FileOut:
        """Upload a file. The body is either the file itself (any ``Content-Type``;
        name it with ``?filename=``) or ``multipart/form-data`` with one part named
        ``file``. The type is read from the content, never from the headers: only
        ``UPLOAD_ALLOWED_TYPES`` pass (``415 unsupported_file_type`` otherwise), up to
        ``UPLOAD_MAX_BYTES`` (``413 file_too_large``).

        ``purpose``: ``attachment`` (default; attach the id to a message),
        ``knowledge`` (with ``lounge_id``: the lounge's mentor or an admin; text,
        Markdown or PDF, indexed for the coach's retrieval by a worker), ``avatar``
        (JPEG, PNG, GIF or WebP) or ``capsule``. Attachments, avatars and capsule
        files that nothing uses after ``ORPHAN_FILE_TTL`` are deleted.

        Answers the file with a presigned ``download_url``."""
        return await services.do_upload(
            app_state,
            principal,
            _body(request),
            content_type=request.headers.get("content-type", ""),
            content_length=request.content_length,
            purpose=purpose,
            lounge_id=lounge_id,
            filename=filename,
        )


class FileController(Controller):
    """Stored files: metadata, presigned downloads, deletion."""

    path = "/files"
    tags = ["files"]
    security = [{"BearerToken": []}]

    @get("", responses=problem_responses(401, 422))
    async def list_files(
        self,
        app_state: State,
        principal: Caller,
        purpose: FromQuery[FilePurpose | None] = None,
        lounge_id: FromQuery[uuid.UUID | None] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> FilePage:
        """Your own files, newest first (no download links: ask ``GET /files/{id}``)."""
        return await services.list_files(
            app_state, principal, purpose=purpose, lounge_id=lounge_id, limit=limit, cursor=cursor
        )

    @get("/{id:uuid}", responses=problem_responses(401, 404, 503))
    async def get_file(self, id: FromPath[uuid.UUID], app_state: State, principal: Caller) -> FileOut:
        """Metadata and a fresh presigned ``download_url`` (valid ``PRESIGNED_URL_TTL``
        seconds). Readable by the owner, by those who may read a lounge the file was
        shared into, and (for someone's current avatar) by any signed-in user;
        ``404 file_not_found`` for everyone else."""
        return await services.get_file(app_state, principal, id)

    @get(
        "/{id:uuid}/download",
        status_code=HTTP_307_TEMPORARY_REDIRECT,
        responses=problem_responses(401, 404, 409, 503),
    )
    async def download(self, id: FromPath[uuid.UUID], app_state: State, principal: Caller) -> Redirect:
        """Redirect (307) to a fresh presigned link to the bytes."""
        url = await services.download_url(app_state, principal, id)
        return Redirect(url, status_code=HTTP_307_TEMPORARY_REDIRECT)

    @delete("/{id:uuid}", status_code=HTTP_204_NO_CONTENT, responses=problem_responses(401, 403, 404))
    async def delete_file(self, id: FromPath[uuid.UUID], app_state: State, principal: Caller) -> None:
        """Delete the file's object and metadata (its owner, or an admin); it disappears
        from the messages it was attached to."""
        await services.do_delete_file(app_state, principal, id)
