"""The realtime protocol's documentation agrees with the code.

``docs/protocol.md`` (prose for client developers) and ``docs/asyncapi.json``
(AsyncAPI 2.6, served at ``/schema/asyncapi.json``) must name every command,
rpc method, publication type, error, disconnect and unsubscribe code the
gateway has, with the numbers the code uses; the AsyncAPI document must be
well-formed, its ``$ref``s must resolve, and every example in both documents
must match the AsyncAPI schemas. No network, no new dependency: a small
JSON-Schema checker below covers exactly the keywords the document uses (and
fails on any other, so it never silently ignores one).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from server.app import create_app
from server.foundation.settings import Settings
from server.gateway import protocol
from server.gateway.asyncapi import ASYNCAPI_PATH, asyncapi_document
from tests.support.lifespan import running_lifespan

# The one-line switch: flip to True once server/app.py registers
# ``server.gateway.asyncapi.asyncapi_document`` itself.
HANDLER_WIRED_IN_APP = True

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_MD = ROOT / "docs" / "protocol.md"
ASYNCAPI_JSON = ROOT / "docs" / "asyncapi.json"
WEBSOCKET_CHANNEL = "/connection/websocket"

# Not emitted by the code yet (or not as a literal), documented as reserved.
RESERVED_PUBLICATION_TYPES: set[str] = set()
RESERVED_RPC_METHODS: set[str] = set()
# Core types the scan must find, so that a broken scan cannot pass vacuously.
KNOWN_EMITTED_TYPES = {
    "message",
    "message.edited",
    "message.deleted",
    "reaction",
    "typing",
    "read",
    "ai.start",
    "ai.delta",
    "ai.snapshot",
    "ai.error",
    "thread.title",
    "notification",
}  # ai.end is chosen by an expression (ai.end / ai.error), so the literal scan cannot see it
ASGI_EVENT_PREFIXES = ("websocket.", "http.", "lifespan.")
COMPONENT_NAME = re.compile(r"^[\w.\-]+$")


# -- loading ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return json.loads(ASYNCAPI_JSON.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def markdown() -> str:
    return PROTOCOL_MD.read_text(encoding="utf-8")


def protocol_constants(prefix: str) -> dict[str, int]:
    return {name: value for name, value in vars(protocol).items() if name.startswith(prefix) and isinstance(value, int)}


def resolve(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        pointer = node["$ref"]
        assert pointer.startswith("#/"), f"only local references are used: {pointer}"
        node = doc
        for part in pointer[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def operation_messages(doc: dict[str, Any], operation: str) -> dict[str, dict[str, Any]]:
    """messageId → message of the WebSocket channel's ``publish`` (client → server)
    or ``subscribe`` (server → client) operation."""
    refs = doc["channels"][WEBSOCKET_CHANNEL][operation]["message"]["oneOf"]
    messages = [resolve(doc, ref) for ref in refs]
    return {message["messageId"]: message for message in messages}


def code_table(doc: dict[str, Any], schema: str) -> dict[int, dict[str, Any]]:
    entries = doc["components"]["schemas"][schema]["oneOf"]
    table = {entry["const"]: entry for entry in entries}
    assert len(table) == len(entries), f"duplicate codes in {schema}"
    return table


def publication_schemas(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``data.type`` → its schema, from ``PublicationData``."""
    result = {}
    for ref in doc["components"]["schemas"]["PublicationData"]["oneOf"]:
        schema = resolve(doc, ref)
        result[schema["properties"]["type"]["const"]] = schema
    return result


# -- a small JSON-Schema checker (exactly the keywords the document uses) -------------------

_IGNORED = {"description", "title", "default", "examples", "format", "$schema"}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def errors(doc: dict[str, Any], schema: Any, value: Any, path: str = "$") -> list[str]:
    """Why ``value`` does not match ``schema`` (empty when it does)."""
    schema = resolve(doc, schema)
    found: list[str] = []
    for keyword, rule in schema.items():
        if keyword in _IGNORED or keyword.startswith("x-"):
            continue
        if keyword == "type":
            if not _TYPES[rule](value):
                return [f"{path}: expected {rule}, got {value!r}"]
        elif keyword == "const":
            if value != rule or type(value) is not type(rule):
                found.append(f"{path}: expected {rule!r}, got {value!r}")
        elif keyword == "enum":
            if value not in rule:
                found.append(f"{path}: {value!r} not in {rule}")
        elif keyword == "oneOf":
            matches = [s for s in rule if not errors(doc, s, value, path)]
            if len(matches) != 1:
                found.append(f"{path}: matches {len(matches)} of oneOf, expected exactly 1")
        elif keyword == "anyOf":
            if all(errors(doc, s, value, path) for s in rule):
                found.append(f"{path}: matches none of anyOf")
        elif keyword == "allOf":
            for sub in rule:
                found += errors(doc, sub, value, path)
        elif keyword == "properties":
            if isinstance(value, dict):
                for name, sub in rule.items():
                    if name in value:
                        found += errors(doc, sub, value[name], f"{path}.{name}")
        elif keyword == "required":
            if isinstance(value, dict):
                found += [f"{path}: missing {name!r}" for name in rule if name not in value]
        elif keyword == "additionalProperties":
            if isinstance(value, dict):
                extra = [k for k in value if k not in schema.get("properties", {})]
                if rule is False:
                    found += [f"{path}: unexpected field {k!r}" for k in extra]
                elif isinstance(rule, dict):
                    for k in extra:
                        found += errors(doc, rule, value[k], f"{path}.{k}")
        elif keyword == "propertyNames":
            if isinstance(value, dict):
                for k in value:
                    found += errors(doc, rule, k, f"{path}[{k!r}]")
        elif keyword == "items":
            if isinstance(value, list):
                for i, item in enumerate(value):
                    found += errors(doc, rule, item, f"{path}[{i}]")
        elif keyword in ("minimum", "maximum"):
            if _TYPES["number"](value) and (value < rule if keyword == "minimum" else value > rule):
                found.append(f"{path}: {value} violates {keyword} {rule}")
        elif keyword in ("minLength", "maxLength"):
            if isinstance(value, str) and (len(value) < rule if keyword == "minLength" else len(value) > rule):
                found.append(f"{path}: length {len(value)} violates {keyword} {rule}")
        elif keyword == "maxItems":
            if isinstance(value, list) and len(value) > rule:
                found.append(f"{path}: more than {rule} items")
        elif keyword == "maxProperties":
            if isinstance(value, dict) and len(value) > rule:
                found.append(f"{path}: more than {rule} fields")
        elif keyword == "pattern":
            if isinstance(value, str) and not re.search(rule, value):
                found.append(f"{path}: {value!r} does not match {rule}")
        else:
            raise AssertionError(f"the checker does not know the keyword {keyword!r}: teach it before using it")
    return found


def matching(doc: dict[str, Any], messages: dict[str, dict[str, Any]], value: Any) -> list[str]:
    return [key for key, message in messages.items() if not errors(doc, message["payload"], value)]


# -- the AsyncAPI document itself ------------------------------------------------------------


def test_asyncapi_document_has_the_required_structure(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "2.6.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["defaultContentType"] == "application/json"
    assert doc["servers"], "at least one server"
    for server in doc["servers"].values():
        assert server["url"] and server["protocol"] in ("ws", "wss")
    assert list(doc["channels"]) == [WEBSOCKET_CHANNEL]
    channel = doc["channels"][WEBSOCKET_CHANNEL]
    assert channel["bindings"]["ws"]["method"] == "GET"
    for operation in ("publish", "subscribe"):
        assert channel[operation]["operationId"]
        assert channel[operation]["message"]["oneOf"], operation
    for section in ("schemas", "messages"):
        for name in doc["components"][section]:
            assert COMPONENT_NAME.match(name), f"bad component name {name!r}"


def test_every_reference_resolves_and_messages_are_complete(doc: dict[str, Any]) -> None:
    for node in walk(doc):
        if isinstance(node, dict) and "$ref" in node:
            assert resolve(doc, node) is not None
    ids = [m["messageId"] for m in doc["components"]["messages"].values()]
    assert len(ids) == len(set(ids)), "messageId must be unique"
    used = {*operation_messages(doc, "publish"), *operation_messages(doc, "subscribe")}
    assert used == set(ids), "every message is sent or received on the channel"
    tag_names = {tag["name"] for tag in doc["tags"]}
    for message in doc["components"]["messages"].values():
        assert message["payload"] and message["summary"] and message["examples"], message["messageId"]
        assert {t["name"] for t in message["tags"]} <= tag_names, message["messageId"]


def test_every_example_matches_its_schema(doc: dict[str, Any]) -> None:
    for key, message in doc["components"]["messages"].items():
        for example in message["examples"]:
            problems = errors(doc, message["payload"], example["payload"])
            assert not problems, (key, problems)
    publication = {"$ref": "#/components/schemas/PublicationData"}
    for name, schema in doc["components"]["schemas"].items():
        for example in schema.get("examples", []):
            problems = errors(doc, schema, example)
            if "x-lounges-delivery" in schema:  # a publication type: also exactly one PublicationData branch
                problems += errors(doc, publication, example)
            assert not problems, (name, problems)


def test_the_checker_rejects_what_the_schemas_forbid(doc: dict[str, Any]) -> None:
    """The checker is part of the test: prove it fails when it should."""
    commands = operation_messages(doc, "publish")
    bad_publish = {"id": 1, "publish": {"channel": "lounge:nope", "data": {"text": "hi"}}}
    assert errors(doc, commands["publish"]["payload"], bad_publish)
    unknown_type = {"type": "no.such.type"}
    assert errors(doc, {"$ref": "#/components/schemas/PublicationData"}, unknown_type)
    assert errors(doc, {"$ref": "#/components/schemas/ErrorCode"}, 199)
    assert errors(doc, {"$ref": "#/components/schemas/MessageIn"}, {"client_id": "x" * 36, "extra": 1})


# -- docs and code agree ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "schema"),
    [("ERROR_", "ErrorCode"), ("DISCONNECT_", "DisconnectCode"), ("UNSUBSCRIBE_", "UnsubscribeCode")],
)
def test_every_code_constant_is_documented_with_its_number(
    doc: dict[str, Any], markdown: str, prefix: str, schema: str
) -> None:
    constants = protocol_constants(prefix)
    assert constants, prefix
    table = code_table(doc, schema)
    assert set(table) == set(constants.values()), f"{schema} must list exactly the codes of protocol.{prefix}*"
    for name, value in constants.items():
        assert table[value]["x-lounges-constant"] == name
        row = re.compile(rf"^\| {value} \| `{name}` \|", re.MULTILINE)
        assert row.search(markdown), f"docs/protocol.md needs a table row '| {value} | `{name}` | ...'"
    if prefix == "DISCONNECT_":
        for value, entry in table.items():
            assert entry["x-reconnect"] is (value < 3500), f"{value}: 3000-3499 reconnect, 3500-3999 do not"


def test_every_rpc_method_is_documented(doc: dict[str, Any], markdown: str) -> None:
    from server.wiring import RPC_METHODS

    methods = set(RPC_METHODS) | RESERVED_RPC_METHODS
    commands = operation_messages(doc, "publish")
    documented = {
        resolve(doc, m["payload"])["properties"]["rpc"]["properties"]["method"]["const"]
        for m in commands.values()
        if "rpc" in resolve(doc, m["payload"]).get("properties", {})
    }
    assert methods <= documented, f"AsyncAPI lacks rpc methods {sorted(methods - documented)}"
    replies = {m.get("x-lounges-rpc-method") for m in operation_messages(doc, "subscribe").values()}
    assert documented <= replies, "every rpc method has a reply message"
    for method in methods:
        assert re.search(rf"^\| `{re.escape(method)}` \|", markdown, re.MULTILINE), (
            f"docs/protocol.md's rpc table needs a row for `{method}`"
        )


def emitted_publication_types() -> set[str]:
    """Every literal ``{"type": "..."}`` in modules that publish (they import
    ``server.streams`` or live in ``server/gateway`` or ``server/streams``), ASGI events aside.
    Parsed, not grepped, so comments and docstrings do not count."""
    found: set[str] = set()
    for path in [*(ROOT / "server").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]:
        source = path.read_text(encoding="utf-8")
        if "server.streams." not in source and path.parent.name not in ("realtime", "streams"):
            continue
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "type"
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                    and not value.value.startswith(ASGI_EVENT_PREFIXES)
                ):
                    found.add(value.value)
    return found


def test_every_publication_type_is_documented(doc: dict[str, Any], markdown: str) -> None:
    emitted = emitted_publication_types()
    assert emitted >= KNOWN_EMITTED_TYPES, f"the source scan missed {sorted(KNOWN_EMITTED_TYPES - emitted)}"
    types = emitted | RESERVED_PUBLICATION_TYPES | {"ai.end"}
    documented = publication_schemas(doc)
    assert types <= set(documented), f"AsyncAPI PublicationData lacks {sorted(types - set(documented))}"
    for kind, schema in documented.items():
        assert schema["x-lounges-delivery"] in ("stored", "ephemeral", "stored or ephemeral"), kind
        if kind in RESERVED_PUBLICATION_TYPES:
            assert "reserved" in schema["x-lounges-status"], kind
    for kind in types:
        heading = re.search(rf"^#+ .*`{re.escape(kind)}`", markdown, re.MULTILINE)
        row = re.search(rf"^\| `{re.escape(kind)}` \|", markdown, re.MULTILINE)
        assert heading or row, f"docs/protocol.md needs a section or table row for `{kind}`"
        assert re.search(rf'"type":"{re.escape(kind)}"', markdown), f"docs/protocol.md needs a JSON example of `{kind}`"


def test_every_command_is_documented(doc: dict[str, Any], markdown: str) -> None:
    from server.gateway.commands import _HANDLERS

    commands = operation_messages(doc, "publish")
    replies = operation_messages(doc, "subscribe")
    for method in _HANDLERS:
        sent = [k for k, m in commands.items() if method in resolve(doc, m["payload"]).get("required", [])]
        answered = [k for k, m in replies.items() if method in resolve(doc, m["payload"]).get("required", [])]
        assert sent and answered, f"AsyncAPI needs the {method} command and its reply"
        assert f'"{method}":{{' in markdown, f"docs/protocol.md needs an example of {method}"


def test_limits_are_documented_with_their_defaults(markdown: str) -> None:
    names = {
        "message_max_length",
        "publish_rate_limit",
        "recovery_max_publications",
        "presence_ttl",
        "drain_seconds",
        "history_cache_size",
        "history_cache_ttl",
    }
    for field in msgspec.structs.fields(Settings):
        if field.name.startswith("ws_") or field.name in names:
            default = field.default
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            row = re.search(rf"`{field.name.upper()}` \[`?{re.escape(shown)}\b", markdown)
            assert row, f"docs/protocol.md's limits need `{field.name.upper()}` [{shown}...]"


def test_every_example_in_protocol_md_matches_the_asyncapi_schemas(doc: dict[str, Any], markdown: str) -> None:
    commands = operation_messages(doc, "publish")
    frames = operation_messages(doc, "subscribe")
    checked = 0
    for block in re.finditer(r"^ *```(json|text)\n(.*?)^ *```", markdown, re.MULTILINE | re.DOTALL):
        for line in block.group(2).splitlines():
            line = line.strip()
            if block.group(1) == "text":
                if not line.startswith(("→ ", "← ")):
                    continue
                direction, line = line[0], line[2:]
                value = json.loads(line)
                candidates = commands if direction == "→" else frames
                assert matching(doc, candidates, value), f"no {direction} message matches {line}"
            elif line:
                value = json.loads(line)
                assert (
                    matching(doc, commands, value)
                    or matching(doc, frames, value)
                    or not errors(doc, {"$ref": "#/components/schemas/PublicationData"}, value)
                ), f"no message or publication matches {line}"
            checked += 1
    assert checked > 40, "the examples were not found"


# -- served by the app -----------------------------------------------------------------------


@pytest.fixture
async def served(app, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(settings)
    if not HANDLER_WIRED_IN_APP:
        application.register(asyncapi_document)
    async with (
        running_lifespan(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t") as http,
    ):
        yield http


async def test_the_document_is_served_as_json(served: httpx.AsyncClient, doc: dict[str, Any]) -> None:
    response = await served.get(ASYNCAPI_PATH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == ASYNCAPI_JSON.read_bytes()
    assert response.json() == doc

    openapi = (await served.get("/schema/openapi.json")).json()
    assert ASYNCAPI_PATH not in openapi["paths"], "the AsyncAPI route stays out of the OpenAPI document"
