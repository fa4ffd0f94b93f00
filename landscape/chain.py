"""The per-run hash chain. One function decides how a link is made; writer and verifiers share it."""

from __future__ import annotations

import hashlib

GENESIS = bytes(32)

_sha256 = hashlib.sha256


def header(
    run_id: str, seq: int, machine: str, entity_id: str, event_type: str, schema_version: int, recorded_at_us: int
) -> bytes:
    """An event's columns joined by unit separators, which cannot occur in our identifiers, so
    fields cannot run into each other: what its link hashes beside the previous hash and its body's."""
    return f"{run_id}\x1f{seq}\x1f{machine}\x1f{entity_id}\x1f{event_type}\x1f{schema_version}\x1f{recorded_at_us}".encode()


def link(prev_hash: bytes, event_header: bytes, payload_hash: bytes) -> bytes:
    """hash = sha256(prev_hash ‖ len(header) ‖ header ‖ payload_hash): the writer's sender makes
    one per event from the `header` the engine made as it appended (`landscape.commits.Chain`)."""
    return _sha256(b"".join((prev_hash, len(event_header).to_bytes(4, "big"), event_header, payload_hash))).digest()


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
    """An event's link (`link` of its `header`) in one call: a verifier makes one per event."""
    return link(prev_hash, header(run_id, seq, machine, entity_id, event_type, schema_version, recorded_at_us),
                payload_hash)  # fmt: skip
