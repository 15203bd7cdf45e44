"""Reading and rewriting field 1 of a protobuf message in raw bytes.

The router never deserialises inference requests (their tensors can be large):
it only needs ``model_name`` (field 1 of ModelInferRequest and
ModelMetadataRequest). Parsing stops at the first occurrence; a later
duplicate field 1 would win in protobuf, so ``read_field1`` checks for that
only when asked.
"""

from __future__ import annotations

from mesh.errors import InvalidArgument
from mesh.protowire import encode_varint


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise InvalidArgument("request is not a valid protobuf message (truncated varint)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise InvalidArgument("request is not a valid protobuf message (varint too long)")


def _skip(buf: bytes | memoryview, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _varint(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        n, pos = _varint(buf, pos)
        return pos + n
    if wire_type == 5:
        return pos + 4
    raise InvalidArgument(f"request is not a valid protobuf message (wire type {wire_type})")


def read_field1(data: bytes) -> str:
    """The string in field 1 ('' if absent). Scans only as far as field 1."""
    return read_string_field(data, 1)


def read_string_field(data: bytes, number: int) -> str:
    """The first string in field ``number`` ('' if absent); e.g. 3 is a ModelInferRequest's ``id``."""
    buf = memoryview(data)
    pos = 0
    n = len(buf)
    while pos < n:
        tag, pos = _varint(buf, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == number and wire_type == 2:
            length, pos = _varint(buf, pos)
            if pos + length > n:
                raise InvalidArgument(f"request is not a valid protobuf message (truncated field {number})")
            try:
                return bytes(buf[pos : pos + length]).decode()
            except UnicodeDecodeError:
                what = "model_name" if number == 1 else f"field {number}"
                raise InvalidArgument(f"{what} is not valid UTF-8") from None
        if field == 0:
            raise InvalidArgument("request is not a valid protobuf message (field number 0)")
        pos = _skip(buf, pos, wire_type)
        if pos > n:
            raise InvalidArgument("request is not a valid protobuf message (truncated field)")
    return ""


def replace_field1(data: bytes, value: str) -> bytes:
    """``data`` with every field 1 removed and ``value`` as field 1 (id injection).

    Copies the message once; used only when the id in the body differs from the
    concrete model id and the runtime asked for injection.
    """
    buf = memoryview(data)
    parts: list[bytes | memoryview] = []
    pos = 0
    start = 0
    n = len(buf)
    while pos < n:
        field_start = pos
        tag, pos = _varint(buf, pos)
        field, wire_type = tag >> 3, tag & 7
        pos = _skip(buf, pos, wire_type)
        if field == 1:
            parts.append(buf[start:field_start])
            start = pos
    parts.append(buf[start:n])
    encoded = value.encode()
    return b"".join([b"\x0a", encode_varint(len(encoded)), encoded, *parts])
