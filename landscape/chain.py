"""The per-run hash chain. One function decides how a link is made; writer and verifiers share it."""

from __future__ import annotations

import hashlib

GENESIS = bytes(32)

_sha256 = hashlib.sha256


def event_hash(
    prev_hash: bytes,
    run_id: str,
    seq: int,
    machine: str,
    entity_id: str,
    event_type: str,
    schema_version: int,
    recorded_at_us: int,
    payload_hash: bytes,
) -> bytes:
    """hash = sha256(prev_hash ‖ len(header) ‖ header ‖ payload_hash), where the header is the
    event's columns joined by unit separators, which cannot occur in our identifiers, so fields
    cannot run into each other. One call, not two: the writer and a replay make one per event."""
    header = (
        f"{run_id}\x1f{seq}\x1f{machine}\x1f{entity_id}\x1f{event_type}\x1f{schema_version}\x1f{recorded_at_us}"
    ).encode()
    return _sha256(b"".join((prev_hash, len(header).to_bytes(4, "big"), header, payload_hash))).digest()
