"""Local stand-ins for the OpenAI and Anthropic APIs that speak their real wire formats over real HTTP.

Each is a raw ASGI app served by uvicorn on 127.0.0.1 (a free port) inside the
test's event loop, reached by the official SDKs through their base URL:

* :class:`OpenAIStandin` — ``POST /v1/chat/completions`` with ``stream: true``
  answers ``text/event-stream``: ``data: {chat.completion.chunk}`` lines (a role
  chunk, content chunks, a ``finish_reason`` chunk), a usage chunk
  (``choices: []``) when ``stream_options.include_usage`` is set, then
  ``data: [DONE]``. Base URL: :attr:`OpenAIStandin.base_url` (``.../v1``).
* :class:`AnthropicStandin` — ``POST /v1/messages`` with ``stream: true``
  answers the named SSE events ``message_start``, ``content_block_start``,
  ``ping``, ``content_block_delta`` (``text_delta``), ``content_block_stop``,
  ``message_delta`` (``stop_reason``, ``usage.output_tokens``) and
  ``message_stop``. Base URL: :attr:`AnthropicStandin.base_url`.

Knobs (attributes, changeable between requests): :attr:`~_Standin.reply`,
:attr:`~_Standin.chunk_size`, :attr:`~_Standin.chunk_delay` and
:attr:`~_Standin.headers_delay` (latency), :attr:`~_Standin.fail_status` with
:attr:`~_Standin.fail_times` (an error with the provider's JSON error body
before streaming), :attr:`~_Standin.fail_after_chunks` with
:attr:`~_Standin.mid_stream` (``"close"`` drops the connection, ``"error_event"``
sends the provider's in-stream error, ``"truncate"`` ends the body cleanly
without finishing), :attr:`~_Standin.send_usage`, :attr:`~_Standin.api_key`.
Every request is recorded in :attr:`~_Standin.requests`; the usage each
stream reported in :attr:`~_Standin.reported_usage`; dropped client
connections are counted in :attr:`~_Standin.disconnects`. :meth:`~_Standin.reset`
restores the defaults and forgets the records, so one server can serve many tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal, TypeVar

import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _DropConnection(Exception):
    """Raised inside the app mid-response: uvicorn then closes the connection abruptly."""


class _QuietDrop(logging.Filter):
    """Keeps uvicorn from logging the deliberate connection drops as application errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _DropConnection))


@dataclass
class Recorded:
    """One request the stand-in received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class _Response:
    """The state of one streamed response: the client's disconnect is watched while it runs."""

    send: Send
    disconnected: asyncio.Event


_STATE = frozenset({"port", "requests", "reported_usage", "disconnects", "failures_sent"})


@dataclass
class _Standin:
    # What the model "says", streamed `chunk_size` characters at a time.
    reply: str = "Hello from the stand-in model."
    chunk_size: int = 6
    # Seconds before each text chunk, and before the response starts.
    chunk_delay: float = 0.0
    headers_delay: float = 0.0
    # Answer this HTTP error (with the provider's JSON error body) before streaming:
    # to the first `fail_times` requests, or to every request when None.
    fail_status: int | None = None
    fail_times: int | None = None
    # `retry-after-ms` sent with 408/409/429/5xx errors (keeps SDK retries fast).
    retry_after_ms: int | None = 1
    # Fail after this many text chunks, the way `mid_stream` says.
    fail_after_chunks: int | None = None
    mid_stream: Literal["close", "error_event", "truncate"] = "close"
    # OpenAI: send the usage chunk when the request asks for it (include_usage); False
    # plays a server that ignores stream_options.
    send_usage: bool = True
    # Input tokens to report; None: about one per four characters of the request's prompt.
    input_tokens: int | None = None
    # When set, any other key is refused with 401.
    api_key: str | None = None

    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    reported_usage: list[tuple[int, int]] = field(default_factory=list)
    disconnects: int = 0
    failures_sent: int = 0
    _server: uvicorn.Server | None = field(default=None, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self, **knobs: Any) -> None:
        """Back to the default knobs (then ``knobs``) with nothing recorded: reuse one server across tests."""
        for spec in fields(self):
            if spec.name.startswith("_") or spec.name in _STATE:
                continue
            setattr(self, spec.name, spec.default if spec.default is not MISSING else spec.default_factory())  # type: ignore[misc]
        self.requests, self.reported_usage, self.disconnects, self.failures_sent = [], [], 0, 0
        for name, value in knobs.items():
            if name.startswith("_") or name in _STATE or not hasattr(self, name):
                raise TypeError(f"unknown stand-in knob {name!r}")
            setattr(self, name, value)

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    def chunks(self, limit: int | None = None) -> list[str]:
        size = max(1, self.chunk_size)
        pieces = [self.reply[i : i + size] for i in range(0, len(self.reply), size)]
        return pieces if limit is None else pieces[:limit]

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        if self.input_tokens is not None:
            return self.input_tokens
        prompt = json.dumps([body.get("system"), body.get("messages")], ensure_ascii=False)
        return max(1, len(prompt) // 4)

    def should_fail(self) -> bool:
        if self.fail_status is None or (self.fail_times is not None and self.failures_sent >= self.fail_times):
            return False
        self.failures_sent += 1
        return True

    async def stop(self) -> None:
        """Stop serving (the port refuses connections afterwards); idempotent."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(Recorded(scope["method"], scope["path"], headers, body))

        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.create_task(watch())
        try:
            await self.handle(scope["method"], scope["path"], headers, body, _Response(send, disconnected))
        finally:
            watcher.cancel()
            if disconnected.is_set():
                self.disconnects += 1

    async def handle(self, method: str, path: str, headers: dict[str, str], body: Any, response: _Response) -> None:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------

    async def pause(self, seconds: float, response: _Response) -> bool:
        """Wait ``seconds`` (cut short when the client goes away); False when it went away."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(response.disconnected.wait(), seconds)
        return not response.disconnected.is_set()

    async def send_json(self, response: _Response, status: int, payload: Any, headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        out = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        out += [(k.encode(), v.encode()) for k, v in headers.items()]
        await response.send({"type": "http.response.start", "status": status, "headers": out})
        await response.send({"type": "http.response.body", "body": data})

    def error_headers(self, status: int) -> dict[str, str]:
        headers = {"x-request-id": f"req_{uuid.uuid4().hex[:24]}"}
        if self.retry_after_ms is not None and (status in (408, 409, 429) or status >= 500):
            headers["retry-after-ms"] = str(self.retry_after_ms)
        return headers

    async def start_stream(self, response: _Response) -> None:
        await response.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-request-id", f"req_{uuid.uuid4().hex[:24]}".encode()),
                ],
            }
        )

    async def send_event(self, response: _Response, data: str, event: str | None = None) -> None:
        frame = (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
        await response.send({"type": "http.response.body", "body": frame.encode(), "more_body": True})

    async def end_stream(self, response: _Response) -> None:
        await response.send({"type": "http.response.body", "body": b""})


# -- OpenAI ------------------------------------------------------------------------------------

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-***. You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1ms."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def openai_error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind, code, default = _OPENAI_ERRORS.get(status, ("server_error", None, f"Error {status}"))
    return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}


@dataclass
class OpenAIStandin(_Standin):
    """``POST /v1/chat/completions`` (streaming) as the OpenAI API answers it."""

    model_reported: str | None = None  # the "model" in chunks; None: echo the request's

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    async def handle(self, method: str, path: str, headers: dict[str, str], body: Any, response: _Response) -> None:
        if method != "POST" or path != "/v1/chat/completions":
            await self.send_json(response, 404, openai_error_body(404, f"Invalid URL ({method} {path})"), {})
            return
        key = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not key or (self.api_key is not None and key != self.api_key):
            await self.send_json(response, 401, openai_error_body(401), self.error_headers(401))
            return
        if self.should_fail():
            assert self.fail_status is not None
            status = self.fail_status
            await self.send_json(response, status, openai_error_body(status), self.error_headers(status))
            return
        problem = self.invalid(body)
        if problem:
            await self.send_json(response, 400, openai_error_body(400, problem), {})
            return
        if not await self.pause(self.headers_delay, response):
            return
        await self.stream(body, response)

    def invalid(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "We could not parse the JSON body of your request."
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "you must provide a model parameter"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must contain at least one message"
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
                return "Invalid value for 'messages[].role'"
            if not isinstance(m.get("content"), str):
                return "Invalid type for 'messages[].content'"
        if body.get("stream") is not True:
            return "this stand-in only answers streaming requests"
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            return "Invalid 'max_tokens': integer below minimum value."
        return None

    async def stream(self, body: dict[str, Any], response: _Response) -> None:
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        model = self.model_reported or body["model"]
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            payload: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_standin",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                payload["usage"] = None
            return json.dumps(payload)

        pieces = self.chunks()
        finish = "stop"
        if max_tokens is not None and len(pieces) > max_tokens:  # one chunk counts as one token
            pieces, finish = pieces[:max_tokens], "length"
        await self.start_stream(response)
        await self.send_event(response, chunk({"role": "assistant", "content": "", "refusal": None}))
        sent = 0
        for piece in pieces:
            if self.fail_after_chunks is not None and sent >= self.fail_after_chunks:
                await self.fail_mid_stream(response)
                return
            if not await self.pause(self.chunk_delay, response):
                return
            await self.send_event(response, chunk({"content": piece}))
            sent += 1
        if self.fail_after_chunks is not None and sent >= self.fail_after_chunks:
            await self.fail_mid_stream(response)
            return
        await self.send_event(response, chunk({}, finish))
        prompt_tokens = self.prompt_tokens(body)
        self.reported_usage.append((prompt_tokens, sent))
        if include_usage and self.send_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": sent,
                "total_tokens": prompt_tokens + sent,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            }
            payload = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_standin",
                "choices": [],
                "usage": usage,
            }
            await self.send_event(response, json.dumps(payload))
        await self.send_event(response, "[DONE]")
        await self.end_stream(response)

    async def fail_mid_stream(self, response: _Response) -> None:
        if self.mid_stream == "error_event":
            error = openai_error_body(500)
            await self.send_event(response, json.dumps(error))
            await self.end_stream(response)
        elif self.mid_stream == "truncate":
            await self.end_stream(response)
        else:
            raise _DropConnection("stand-in drops the connection mid-stream")


# -- Anthropic ---------------------------------------------------------------------------------

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "An unexpected error has occurred internal to Anthropic's systems."),
    529: ("overloaded_error", "Overloaded"),
}


def anthropic_error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind, default = _ANTHROPIC_ERRORS.get(status, ("api_error", f"Error {status}"))
    return {
        "type": "error",
        "error": {"type": kind, "message": message or default},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }


@dataclass
class AnthropicStandin(_Standin):
    """``POST /v1/messages`` (streaming) as the Anthropic API answers it."""

    # The status whose error type mid_stream="error_event" sends in the stream (529: overloaded_error).
    stream_error_status: int = 529

    @property
    def base_url(self) -> str:
        return self.url

    async def handle(self, method: str, path: str, headers: dict[str, str], body: Any, response: _Response) -> None:
        if method != "POST" or path != "/v1/messages":
            await self.send_json(response, 404, anthropic_error_body(404, f"Not found: {method} {path}"), {})
            return
        # Older SDKs send the key as x-api-key, newer ones as a bearer token: both are accepted.
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not key or (self.api_key is not None and key != self.api_key):
            await self.send_json(response, 401, anthropic_error_body(401), self.error_headers(401))
            return
        if not headers.get("anthropic-version"):
            await self.send_json(response, 400, anthropic_error_body(400, "anthropic-version: header is required"), {})
            return
        if self.should_fail():
            assert self.fail_status is not None
            status = self.fail_status
            await self.send_json(response, status, anthropic_error_body(status), self.error_headers(status))
            return
        problem = self.invalid(body)
        if problem:
            await self.send_json(response, 400, anthropic_error_body(400, problem), {})
            return
        if not await self.pause(self.headers_delay, response):
            return
        await self.stream(body, response)

    def invalid(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "Request body is not valid JSON."
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "model: Field required"
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
            return "max_tokens: Field required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: at least one message is required"
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                return f"messages.{i}.role: Input should be 'user' or 'assistant'"
            if not isinstance(m.get("content"), (str, list)) or not m["content"]:
                return f"messages.{i}: all messages must have non-empty content"
        if messages[0]["role"] != "user":
            return 'messages: first message must use the "user" role'
        system = body.get("system")
        if system is not None and (not isinstance(system, (str, list)) or system == ""):
            return "system: text content blocks must be non-empty"
        if body.get("stream") is not True:
            return "this stand-in only answers streaming requests"
        return None

    async def stream(self, body: dict[str, Any], response: _Response) -> None:
        prompt_tokens = self.prompt_tokens(body)
        pieces = self.chunks()
        stop_reason = "end_turn"
        if len(pieces) > body["max_tokens"]:  # one chunk counts as one token
            pieces, stop_reason = pieces[: body["max_tokens"]], "max_tokens"
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": body["model"],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
                "service_tier": "standard",
            },
        }
        await self.start_stream(response)
        await self.event(response, "message_start", {"type": "message_start", "message": message})
        await self.event(
            response,
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        await self.event(response, "ping", {"type": "ping"})
        sent = 0
        for piece in pieces:
            if self.fail_after_chunks is not None and sent >= self.fail_after_chunks:
                await self.fail_mid_stream(response)
                return
            if not await self.pause(self.chunk_delay, response):
                return
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            await self.event(response, "content_block_delta", delta)
            sent += 1
        if self.fail_after_chunks is not None and sent >= self.fail_after_chunks:
            await self.fail_mid_stream(response)
            return
        await self.event(response, "content_block_stop", {"type": "content_block_stop", "index": 0})
        self.reported_usage.append((prompt_tokens, sent))
        await self.event(
            response,
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": sent},
            },
        )
        await self.event(response, "message_stop", {"type": "message_stop"})
        await self.end_stream(response)

    async def event(self, response: _Response, name: str, payload: dict[str, Any]) -> None:
        await self.send_event(response, json.dumps(payload), event=name)

    async def fail_mid_stream(self, response: _Response) -> None:
        if self.mid_stream == "error_event":
            error = anthropic_error_body(self.stream_error_status)
            await self.event(response, "error", {"type": "error", "error": error["error"]})
            await self.end_stream(response)
        elif self.mid_stream == "truncate":
            await self.end_stream(response)
        else:
            raise _DropConnection("stand-in drops the connection mid-stream")


S = TypeVar("S", bound=_Standin)


# -- serving -----------------------------------------------------------------------------------


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: Ctrl-C must still stop pytest."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def _serving(standin: S) -> AsyncIterator[S]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    standin.port = sock.getsockname()[1]
    server = _QuietServer(
        uvicorn.Config(
            standin,
            host="127.0.0.1",
            port=standin.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
    )
    quiet = _QuietDrop()
    logging.getLogger("uvicorn.error").addFilter(quiet)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    standin._server, standin._task = server, task
    try:
        while not server.started:
            if task.done():
                task.result()  # start-up failed: raise its error here
                raise RuntimeError("the stand-in stopped before it started")
            await asyncio.sleep(0.005)
        yield standin
    finally:
        await standin.stop()
        sock.close()
        logging.getLogger("uvicorn.error").removeFilter(quiet)


@contextlib.asynccontextmanager
async def running_openai_standin(**knobs: Any) -> AsyncIterator[OpenAIStandin]:
    """Serve a new :class:`OpenAIStandin` (``knobs`` set its attributes) in this event loop."""
    async with _serving(OpenAIStandin(**knobs)) as standin:
        yield standin


@contextlib.asynccontextmanager
async def running_anthropic_standin(**knobs: Any) -> AsyncIterator[AnthropicStandin]:
    """Serve a new :class:`AnthropicStandin` (``knobs`` set its attributes) in this event loop."""
    async with _serving(AnthropicStandin(**knobs)) as standin:
        yield standin
