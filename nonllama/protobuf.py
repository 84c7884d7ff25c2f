"""The few protobuf wire-format helpers nonllama needs to read and edit SentencePiece models
(`ModelProto`) without depending on the protobuf package: export reads the pieces, train-tokenizer
retypes the chat tokens. Only what those use: varints and the field walk."""

from __future__ import annotations

from collections.abc import Iterator


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at `data[i:]` and the index after it."""
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7


def varint(value: int) -> bytes:
    """`value` (>= 0) as a varint."""
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def fields(data: bytes) -> Iterator[tuple[int, bytes | int, bytes]]:
    """(field number, value, the field's raw bytes) of each field of a message: a varint's int,
    a length-delimited field's payload, a fixed-width field's bytes."""
    i = 0
    while i < len(data):
        start = i
        key, i = read_varint(data, i)
        number, wire = key >> 3, key & 7
        value: bytes | int
        if wire == 0:
            value, i = read_varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            size, i = read_varint(data, i)
            value, i = data[i:i + size], i + size
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value, data[start:i]


def message_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a sub-message, bytes or a string) with its key."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload
