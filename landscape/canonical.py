"""Canonical bytes for row data, and the salted commitment that names them in the payload store.

Field order is kept (not sorted): it is observable in every output (a CSV header, a JSON
object), so two rows with the same fields in another order are different data.

A row is named by `sha256(salt ‖ data)` with a random 16-byte salt stored beside the data. The
events (and so the hash chain and the Merkle tree) hold only that commitment. Erasing a row
deletes its data *and* its salt: every proof still verifies, and a guessed value can no longer be
confirmed against the kept commitment, however few values it could have been (a plain hash of a
low-entropy value can be brute-forced). Payloads written before salting (migration 0004) have an
empty salt: their commitment is the plain sha256 of the data.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import msgspec

from landscape.records import Payload

SALT_BYTES = 16

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def encode_row(row: Any) -> bytes:
    return _encoder.encode(row)


def decode_row(data: bytes) -> Any:
    return _decoder.decode(data)


def commitment(salt: bytes, data: bytes) -> str:
    """The hex name of a payload: sha256(salt ‖ data). The salt has a fixed length (or is empty,
    for payloads written before salting), so salt and data cannot be re-split another way."""
    return hashlib.sha256(salt + data).hexdigest()


def commit_row(row: Any) -> tuple[str, Payload]:
    """(commitment, payload) of one row, with a fresh random salt."""
    data = _encoder.encode(row)
    salt = os.urandom(SALT_BYTES)
    return commitment(salt, data), Payload(salt, data)
