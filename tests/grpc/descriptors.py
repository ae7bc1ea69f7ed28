"""Protobuf descriptors as plain data, to compare two definitions of one package."""

from __future__ import annotations

from typing import Any


def _message(m: Any, out: dict[str, Any]) -> None:
    fields = {}
    for f in m.fields:
        kind = f.message_type or f.enum_type
        fields[f.name] = {
            "number": f.number,
            "type": f.type,
            "repeated": f.is_repeated,
            "type_name": kind.full_name if kind is not None else "",
            "oneof": f.containing_oneof.name if f.containing_oneof is not None else "",
        }
    out["messages"][m.full_name] = fields
    for nested in m.nested_types:
        _message(nested, out)
    for e in m.enum_types:
        out["enums"][e.full_name] = {v.name: v.number for v in e.values}


def describe_files(files: list[Any]) -> dict[str, Any]:
    """{"messages": {name: {field: {...}}}, "enums": {...}, "services": {...}}."""
    out: dict[str, Any] = {"messages": {}, "enums": {}, "services": {}}
    for fd in files:
        for m in fd.message_types_by_name.values():
            _message(m, out)
        for e in fd.enum_types_by_name.values():
            out["enums"][e.full_name] = {v.name: v.number for v in e.values}
        for s in fd.services_by_name.values():
            out["services"][s.full_name] = {
                m.name: {
                    "input": m.input_type.full_name,
                    "output": m.output_type.full_name,
                    "client_streaming": m.client_streaming,
                    "server_streaming": m.server_streaming,
                }
                for m in s.methods
            }
    return out
