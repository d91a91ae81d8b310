"""Protobuf wire-format decoding (just enough for CRIU's proto2 messages).

A message is decoded against a small schema (field number -> name and kind).
Fields not in the schema are skipped, so newer CRIU versions that add fields
still decode. Every length is checked against the bytes that remain, so a
corrupt size can never make us read or allocate past the buffer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

VARINT, I64, LEN, I32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a valid protobuf message."""


@dataclass(frozen=True)
class Field:
    """How one field of a message is decoded."""

    name: str
    kind: str  # "uint", "int32", "bool", "string", "bytes", "message"
    repeated: bool = False
    message: Mapping[int, Field] | None = None


Schema = Mapping[int, Field]


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return (value, next position)."""
    result = shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def iter_fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, raw value) for each field in ``buf``."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wtype = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wtype == VARINT:
            value, pos = read_varint(buf, pos)
            yield number, wtype, value
        elif wtype in (I64, I32):
            size = 8 if wtype == I64 else 4
            if pos + size > end:
                raise WireError("truncated fixed-width field")
            yield number, wtype, int.from_bytes(buf[pos : pos + size], "little")
            pos += size
        elif wtype == LEN:
            size, pos = read_varint(buf, pos)
            if size > end - pos:
                raise WireError(f"field {number} declares {size} bytes, {end - pos} remain")
            yield number, wtype, buf[pos : pos + size]
            pos += size
        else:
            raise WireError(f"unsupported wire type {wtype}")


def _scalar(field: Field, value: int | memoryview) -> Any:
    if isinstance(value, memoryview):
        if field.kind == "string":
            return bytes(value).decode("utf-8", "replace")
        if field.kind == "bytes":
            return bytes(value)
        if field.kind == "message":
            assert field.message is not None
            return decode(value, field.message)
        raise WireError(f"field {field.name}: length-delimited value for a {field.kind}")
    if field.kind == "bool":
        return bool(value)
    if field.kind == "int32":
        return value - (1 << 64) if value >= 1 << 63 else value
    if field.kind == "uint":
        return value
    raise WireError(f"field {field.name}: a number where a {field.kind} was expected")


def _packed(field: Field, value: memoryview) -> list[int]:
    out, pos = [], 0
    while pos < len(value):
        item, pos = read_varint(value, pos)
        out.append(_scalar(field, item))
    return out


def decode(buf: bytes | memoryview, schema: Schema) -> dict[str, Any]:
    """Decode a message; repeated fields become lists, absent ones are missing keys."""
    view = memoryview(buf)
    out: dict[str, Any] = {}
    for number, _wtype, value in iter_fields(view):
        field = schema.get(number)
        if field is None:
            continue
        if field.repeated:
            items = out.setdefault(field.name, [])
            if isinstance(value, memoryview) and field.kind in ("uint", "int32", "bool"):
                items.extend(_packed(field, value))
            else:
                items.append(_scalar(field, value))
        else:
            out[field.name] = _scalar(field, value)
    return out
