"""The per-run hash chain. One function decides how a link is made; writer and verifiers share it."""

from __future__ import annotations

import hashlib

GENESIS = bytes(32)

_sha256 = hashlib.sha256


def header(
    run_id: str, seq: int, machine: str, entity_id: str, event_type: str, schema_version: int, recorded_at_us: int
) -> bytes:
    """An event's columns joined by unit separators: what its link hashes beside the previous hash
    and its body's. Only the entity id can hold a separator (a fork's branch name is part of its
    children's ids); the fields after it cannot (a type, numbers), nor those before it (the run id
    ELSPETH made, a number, a machine), so a header splits into its fields one way only."""
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
