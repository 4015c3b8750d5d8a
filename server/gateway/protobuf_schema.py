"""The Centrifuge client protocol v2's Protobuf messages, as this server uses them.

Written here from the protocol's published layout (message names, field numbers and
types of centrifugal/protocol's ``client.proto``) and built at import into message
classes by the ``protobuf`` runtime, so no generated code and no ``protoc`` are
needed. Only the fields this server reads or writes are declared: a field a client
sends that is not declared here (a subscription filter, say) is skipped by the
parser as an unknown field, exactly as the protocol expects of an older peer.
tests/test_protobuf_codec.py checks every message byte for byte against the
encoder the official centrifuge-python SDK ships.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
    "bool": _F.TYPE_BOOL,
    "uint32": _F.TYPE_UINT32,
    "int32": _F.TYPE_INT32,
    "uint64": _F.TYPE_UINT64,
    "int64": _F.TYPE_INT64,
}
PACKAGE = "lounges.centrifuge"

# message -> [(field, number, type)]; a type is a scalar, a message name, "repeated X"
# or "map<string, X>".
MESSAGES: dict[str, list[tuple[str, int, str]]] = {
    # -- client to server ------------------------------------------------------------------
    "Command": [
        ("id", 1, "uint32"),
        ("connect", 4, "ConnectRequest"),
        ("subscribe", 5, "SubscribeRequest"),
        ("unsubscribe", 6, "UnsubscribeRequest"),
        ("publish", 7, "PublishRequest"),
        ("presence", 8, "PresenceRequest"),
        ("presence_stats", 9, "PresenceStatsRequest"),
        ("history", 10, "HistoryRequest"),
        ("ping", 11, "PingRequest"),
        ("send", 12, "SendRequest"),
        ("rpc", 13, "RPCRequest"),
        ("refresh", 14, "RefreshRequest"),
        ("sub_refresh", 15, "SubRefreshRequest"),
    ],
    "ConnectRequest": [
        ("token", 1, "string"),
        ("data", 2, "bytes"),
        ("subs", 3, "map<string, SubscribeRequest>"),
        ("name", 4, "string"),
        ("version", 5, "string"),
        ("headers", 6, "map<string, string>"),
        ("flag", 7, "int64"),
    ],
    "RefreshRequest": [("token", 1, "string")],
    "SubscribeRequest": [
        ("channel", 1, "string"),
        ("token", 2, "string"),
        ("recover", 3, "bool"),
        ("epoch", 6, "string"),
        ("offset", 7, "uint64"),
        ("data", 8, "bytes"),
        ("positioned", 9, "bool"),
        ("recoverable", 10, "bool"),
        ("join_leave", 11, "bool"),
        ("delta", 12, "string"),
        ("flag", 14, "int64"),
    ],
    "SubRefreshRequest": [("channel", 1, "string"), ("token", 2, "string")],
    "UnsubscribeRequest": [("channel", 1, "string")],
    "PublishRequest": [("channel", 1, "string"), ("data", 2, "bytes")],
    "PresenceRequest": [("channel", 1, "string")],
    "PresenceStatsRequest": [("channel", 1, "string")],
    "StreamPosition": [("offset", 1, "uint64"), ("epoch", 2, "string")],
    "HistoryRequest": [
        ("channel", 1, "string"),
        ("limit", 7, "int32"),
        ("since", 8, "StreamPosition"),
        ("reverse", 9, "bool"),
    ],
    "PingRequest": [],
    "RPCRequest": [("data", 1, "bytes"), ("method", 2, "string")],
    "SendRequest": [("data", 1, "bytes")],
    # -- server to client ------------------------------------------------------------------
    "Reply": [
        ("id", 1, "uint32"),
        ("error", 2, "Error"),
        ("push", 4, "Push"),
        ("connect", 5, "ConnectResult"),
        ("subscribe", 6, "SubscribeResult"),
        ("unsubscribe", 7, "UnsubscribeResult"),
        ("publish", 8, "PublishResult"),
        ("presence", 9, "PresenceResult"),
        ("presence_stats", 10, "PresenceStatsResult"),
        ("history", 11, "HistoryResult"),
        ("ping", 12, "PingResult"),
        ("rpc", 13, "RPCResult"),
        ("refresh", 14, "RefreshResult"),
        ("sub_refresh", 15, "SubRefreshResult"),
    ],
    "Error": [("code", 1, "uint32"), ("message", 2, "string"), ("temporary", 3, "bool")],
    "Push": [
        ("channel", 2, "string"),
        ("pub", 4, "Publication"),
        ("join", 5, "Join"),
        ("leave", 6, "Leave"),
        ("unsubscribe", 7, "Unsubscribe"),
        ("subscribe", 9, "Subscribe"),
        ("disconnect", 11, "Disconnect"),
    ],
    "ClientInfo": [
        ("user", 1, "string"),
        ("client", 2, "string"),
        ("conn_info", 3, "bytes"),
        ("chan_info", 4, "bytes"),
    ],
    "Publication": [("data", 4, "bytes"), ("info", 5, "ClientInfo"), ("offset", 6, "uint64")],
    "Join": [("info", 1, "ClientInfo")],
    "Leave": [("info", 1, "ClientInfo")],
    "Unsubscribe": [("code", 2, "uint32"), ("reason", 3, "string")],
    "Subscribe": [
        ("recoverable", 1, "bool"),
        ("epoch", 4, "string"),
        ("offset", 5, "uint64"),
        ("positioned", 6, "bool"),
        ("data", 7, "bytes"),
    ],
    "Disconnect": [("code", 1, "uint32"), ("reason", 2, "string")],
    "ConnectResult": [
        ("client", 1, "string"),
        ("version", 2, "string"),
        ("expires", 3, "bool"),
        ("ttl", 4, "uint32"),
        ("data", 5, "bytes"),
        ("subs", 6, "map<string, SubscribeResult>"),
        ("ping", 7, "uint32"),
        ("pong", 8, "bool"),
        ("session", 9, "string"),
        ("node", 10, "string"),
    ],
    "RefreshResult": [("client", 1, "string"), ("version", 2, "string"), ("expires", 3, "bool"), ("ttl", 4, "uint32")],
    "SubscribeResult": [
        ("expires", 1, "bool"),
        ("ttl", 2, "uint32"),
        ("recoverable", 3, "bool"),
        ("epoch", 6, "string"),
        ("publications", 7, "repeated Publication"),
        ("recovered", 8, "bool"),
        ("offset", 9, "uint64"),
        ("positioned", 10, "bool"),
        ("data", 11, "bytes"),
        ("was_recovering", 12, "bool"),
    ],
    "SubRefreshResult": [("expires", 1, "bool"), ("ttl", 2, "uint32")],
    "UnsubscribeResult": [],
    "PublishResult": [],
    "PresenceResult": [("presence", 1, "map<string, ClientInfo>")],
    "PresenceStatsResult": [("num_clients", 1, "uint32"), ("num_users", 2, "uint32")],
    "HistoryResult": [("publications", 1, "repeated Publication"), ("epoch", 2, "string"), ("offset", 3, "uint64")],
    "PingResult": [],
    "RPCResult": [("data", 1, "bytes")],
}


def _set_type(field: descriptor_pb2.FieldDescriptorProto, type_name: str) -> None:
    if type_name in _SCALARS:
        field.type = _SCALARS[type_name]
    else:
        field.type = _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{type_name}"


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="lounges/centrifuge_client.proto", package=PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind in fields:
            field = message.field.add(name=field_name, number=number, label=_F.LABEL_OPTIONAL)
            if kind.startswith("repeated "):
                field.label = _F.LABEL_REPEATED
                _set_type(field, kind.removeprefix("repeated "))
            elif kind.startswith("map<"):
                key_type, value_type = (part.strip() for part in kind[4:-1].split(","))
                entry_name = "".join(part.title() for part in field_name.split("_")) + "Entry"
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                _set_type(entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL), key_type)
                _set_type(entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL), value_type)
                field.label = _F.LABEL_REPEATED
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{name}.{entry_name}"
            else:
                _set_type(field, kind)
    return file


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())


def message_class(name: str) -> Any:
    """The message class of ``name`` (e.g. ``"Reply"``)."""
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


Command = message_class("Command")
Reply = message_class("Reply")
