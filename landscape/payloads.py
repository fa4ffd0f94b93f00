"""Reading row payloads back when they must all be there (resume, explain)."""

from __future__ import annotations

from collections.abc import Iterable

from landscape.errors import CorruptLog
from landscape.recorder import Recorder


def load_payloads(recorder: Recorder, hashes: Iterable[str]) -> dict[str, bytes]:
    """hash hex -> stored bytes for every hash given. A missing payload is an error: resume and
    explain cannot continue without the data (it may have been purged by retention)."""
    wanted = set(hashes)
    found = recorder.payloads(wanted)
    missing = sorted(wanted - found.keys())
    if missing:
        raise CorruptLog(f"{len(missing)} row payload(s) are missing from the payload store, e.g. {missing[0]}")
    return found
