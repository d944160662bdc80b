"""Loads each codec implementation for the codec tests and builds PostgreSQL wire messages for them."""

from __future__ import annotations

import importlib
import struct

import pytest

from rdsproxy._codec import CodecSet, extensions_disabled

IMPLEMENTATION_NAMES = ("compiled", "pure")
_MODULE_SUFFIXES = {"compiled": "_c", "pure": "_py"}


def load_implementation(name: str) -> CodecSet:
    """Imports one implementation directly, whatever the selector in rdsproxy._codec picked."""
    suffix = _MODULE_SUFFIXES[name]
    try:
        pgframe = importlib.import_module(f"rdsproxy._codec.pgframe{suffix}")
        classify = importlib.import_module(f"rdsproxy._codec.classify{suffix}")
    except ImportError:
        if name == "compiled" and extensions_disabled():
            pytest.skip("the compiled codecs are not built and RDSPROXY_NO_EXTENSIONS is set")
        raise  # a normal build must have them: fail rather than skip
    return CodecSet(name, pgframe, classify)


def pg_message(msg_type: bytes, payload: bytes = b"") -> bytes:
    """A typed message: type byte, Int32 length counting itself, payload."""
    return msg_type + struct.pack("!i", len(payload) + 4) + payload


def startup_packet(code: int, body: bytes = b"") -> bytes:
    """An untyped startup-phase packet: Int32 length counting itself, Int32 protocol/request code, body."""
    return struct.pack("!ii", len(body) + 8, code) + body


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """data split at the given offsets (sorted, deduplicated, clipped to the data)."""
    points = sorted({cut for cut in cuts if 0 < cut < len(data)})
    bounds = [0, *points, len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:])]


def backend_stream(rows: int = 200) -> bytes:
    """A realistic backend response: notice, row description, data rows, command complete, parameter status,
    a failing second statement and ReadyForQuery."""
    row_description = struct.pack("!h", 2) + b"".join(
        name + b"\0" + struct.pack("!ihihih", 16384, index + 1, 23, 4, -1, 0)
        for index, name in enumerate((b"id", b"label"))
    )
    data_rows = b"".join(
        pg_message(
            b"D",
            struct.pack("!h", 2)
            + struct.pack("!i", len(str(n)))
            + str(n).encode()
            + struct.pack("!i", 12)
            + b"label-%06d" % n,
        )
        for n in range(rows)
    )
    return b"".join(
        [
            pg_message(b"N", b"SNOTICE\0C00000\0Mhello\0\0"),
            pg_message(b"T", row_description),
            data_rows,
            pg_message(b"C", b"SELECT %d\0" % rows),
            pg_message(b"S", b"application_name\0demo\0"),
            pg_message(b"E", b'SERROR\0C42P01\0Mrelation "nope" does not exist\0\0'),
            pg_message(b"Z", b"I"),
        ]
    )


def split_messages(stream: bytes) -> list[tuple[int, bytes, int]]:
    """Every typed message of a well-formed stream as (type, payload, end offset)."""
    messages = []
    pos = 0
    while pos < len(stream):
        (length,) = struct.unpack_from("!i", stream, pos + 1)
        end = pos + 1 + length
        messages.append((stream[pos], stream[pos + 5 : end], end))
        pos = end
    return messages
