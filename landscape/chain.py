"""The per-run hash chain. One function decides how a link is made; writer and verifier share it."""

from __future__ import annotations

import hashlib

GENESIS = bytes(32)


def header(
    run_id: str,
    seq: int,
    machine: str,
    entity_id: str,
    event_type: str,
    schema_version: int,
    recorded_at_us: int,
) -> bytes:
    # Unit separators cannot occur in our identifiers, so fields cannot run into each other.
    return f"{run_id}\x1f{seq}\x1f{machine}\x1f{entity_id}\x1f{event_type}\x1f{schema_version}\x1f{recorded_at_us}".encode()


def link(prev_hash: bytes, header_bytes: bytes, payload_hash: bytes) -> bytes:
    """hash = sha256(prev_hash ‖ len(header) ‖ header ‖ payload_hash)."""
    return hashlib.sha256(
        b"".join((prev_hash, len(header_bytes).to_bytes(4, "big"), header_bytes, payload_hash))
    ).digest()
