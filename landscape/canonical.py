"""Canonical bytes for row data, and the content hash that names them in the payload store.

Field order is kept (not sorted): it is observable in every output (a CSV header, a JSON
object), so two rows with the same fields in another order are different data.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def encode_row(row: Any) -> bytes:
    return _encoder.encode(row)


def decode_row(data: bytes) -> Any:
    return _decoder.decode(data)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_row(row: Any) -> tuple[str, bytes]:
    """(hash, canonical bytes) of one row."""
    data = _encoder.encode(row)
    return hashlib.sha256(data).hexdigest(), data
