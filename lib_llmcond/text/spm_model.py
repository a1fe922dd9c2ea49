"""Piece types of a SentencePiece model file, read straight from its protobuf bytes.

`sentencepiece` exposes no "is user defined" query and its generated protobuf module needs a newer `protobuf` than
A1111 pins, so the few fields needed are decoded here (ModelProto.pieces = field 1; SentencePiece.piece = 1,
.type = 3).
"""

from __future__ import annotations

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one message; value is an int or a bytes slice."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def proto_fields(buf: bytes):
    """(field number, value) of one protobuf message: varints as int, everything else as bytes."""
    for field, _wire, value in _fields(buf):
        yield field, value if isinstance(value, int) else bytes(value)


def piece_types(model: bytes) -> list[tuple[str, int]]:
    """(piece, type) for every piece of a serialized SentencePiece ModelProto, in id order."""
    out: list[tuple[str, int]] = []
    for field, wire, value in _fields(model):
        if field != 1 or wire != 2:
            continue
        piece, kind = "", NORMAL
        for f, w, v in _fields(value):
            if f == 1 and w == 2:
                piece = bytes(v).decode("utf-8")
            elif f == 3 and w == 0:
                kind = v
        out.append((piece, kind))
    return out


def pieces_of_type(model: bytes, kind: int) -> list[str]:
    """Pieces of one type. Fast path for the 262k-piece Gemma file: each piece message is only decoded when its
    bytes contain the type field with that value."""
    marker = bytes([3 << 3 | 0, kind])  # field 3, varint, value ``kind`` (< 128)
    out: list[str] = []
    pos, end = 0, len(model)
    while pos < end:
        key, pos = _varint(model, pos)
        wire = key & 7
        if wire != 2:
            _, pos = _skip(model, pos, wire)
            continue
        size, pos = _varint(model, pos)
        stop = pos + size
        if key == (1 << 3 | 2) and model.find(marker, pos, stop) >= 0:
            piece, found = "", NORMAL
            for f, w, v in _fields(model[pos:stop]):
                if f == 1 and w == 2:
                    piece = bytes(v).decode("utf-8")
                elif f == 3 and w == 0:
                    found = v
            if found == kind:
                out.append(piece)
        pos = stop
    return out


def _skip(buf: bytes, pos: int, wire: int) -> tuple[None, int]:
    if wire == 0:
        return None, _varint(buf, pos)[1]
    if wire in (1, 5):
        return None, pos + (8 if wire == 1 else 4)
    raise ValueError(f"unsupported protobuf wire type {wire}")
