"""Reading row payloads back from the content-addressed payload store."""

from __future__ import annotations

from collections.abc import Iterable

from landscape.db import Database
from landscape.errors import CorruptLog


def load_payloads(db: Database, hashes: Iterable[str]) -> dict[str, bytes]:
    """hash hex -> stored bytes for every hash given. A missing payload is an error: resume and
    explain cannot continue without the data (it may have been purged by retention)."""
    wanted = sorted(set(hashes))
    found: dict[str, bytes] = {}
    conn = db.connect()
    try:
        for i in range(0, len(wanted), 10_000):
            chunk = [bytes.fromhex(h) for h in wanted[i : i + 10_000]]
            for h, data in conn.execute("SELECT hash, data FROM payloads WHERE hash = ANY(%s)", (chunk,)):
                found[bytes(h).hex()] = bytes(data)
        conn.commit()
    finally:
        conn.close()
    missing = [h for h in wanted if h not in found]
    if missing:
        raise CorruptLog(f"{len(missing)} row payload(s) are missing from the payload store, e.g. {missing[0]}")
    return found
