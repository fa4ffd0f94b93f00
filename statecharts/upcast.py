"""Reading events written by older versions of ELSPETH.

Every event type is at schema version 1 today. When a type changes incompatibly, bump its
`SCHEMA_VERSION` and register a function here that rewrites the old body into the new shape.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from statecharts.errors import UnknownSchemaVersion as UnknownSchemaVersion
from statecharts.events import EVENT_TYPES, EventBase, decode_event

# (event type, old version) -> function from the old body (plain data) to the next version's
Upcaster = Callable[[dict[str, object]], dict[str, object]]
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcast(event_type: str, version: int, payload: bytes) -> EventBase:
    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        raise UnknownSchemaVersion(event_type, version)
    if version == cls.SCHEMA_VERSION:
        return decode_event(payload)
    if version > cls.SCHEMA_VERSION:
        raise UnknownSchemaVersion(event_type, version)
    body: dict[str, object] = msgspec.json.decode(payload)
    while version < cls.SCHEMA_VERSION:
        step = UPCASTERS.get((event_type, version))
        if step is None:
            raise UnknownSchemaVersion(event_type, version)
        body = step(body)
        version += 1
    return msgspec.convert(body, cls)
