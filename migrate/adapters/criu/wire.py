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


class TooManyItems(WireError):
    """Repeated fields hold more items than the caller allows."""

    def __init__(self, field: str, limit: int) -> None:
        super().__init__(f"field {field} repeats more than {limit} times")
        self.field, self.limit = field, limit


def _packed(field: Field, value: memoryview, room: int) -> list[int] | None:
    """The items of a packed field; None as soon as there are more than ``room``."""
    out: list[int] = []
    pos = 0
    while pos < len(value):
        if len(out) >= room:
            # Checked before decoding more: a packed field of 60 MiB is 60
            # million items, and the point of the bound is never to build them.
            return None
        item, pos = read_varint(value, pos)
        out.append(_scalar(field, item))
    return out


def decode(buf: bytes | memoryview, schema: Schema, *,
           max_repeated: int | None = None) -> dict[str, Any]:
    """Decode a message; repeated fields become lists, absent ones are missing keys.

    ``max_repeated`` bounds the items of all repeated fields together
    (`TooManyItems` past it); the caller derives it from what the archive holds.
    """
    view = memoryview(buf)
    out: dict[str, Any] = {}
    used = 0
    limit = len(view) if max_repeated is None else max_repeated  # an item takes >= 1 byte
    for number, _wtype, value in iter_fields(view):
        field = schema.get(number)
        if field is None:
            continue
        if not field.repeated:
            out[field.name] = _scalar(field, value)
            continue
        if isinstance(value, memoryview) and field.kind in ("uint", "int32", "bool"):
            got = _packed(field, value, limit - used)
        else:
            got = [_scalar(field, value)] if used < limit else None
        if got is None:
            raise TooManyItems(field.name, limit)
        out.setdefault(field.name, []).extend(got)
        used += len(got)
    return out
