"""Protobuf wire-format pieces for code that handles messages as raw bytes."""

from __future__ import annotations


def encode_varint(v: int) -> bytes:
    """``v`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)
