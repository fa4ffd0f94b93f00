"""Reading row payloads back when they must all be there (resume, explain)."""

from __future__ import annotations

from collections.abc import Iterable

from landscape.errors import CorruptLog
from landscape.recorder import Recorder
from landscape.verify import payload_matches


def load_payloads(
    recorder: Recorder, run_id: str, hashes: Iterable[str], *, what: str | None = None
) -> dict[str, bytes]:
    """hash hex -> stored bytes for every hash given, each checked against its commitment. A
    missing or altered payload is an error: resume cannot continue without the data (it may have
    been erased: see `elspeth purge`). `what`: whose data they are, as said when erased (default:
    so many of the run's unfinished tokens)."""
    wanted = set(hashes)
    found = recorder.payloads(run_id, wanted)
    missing = sorted(wanted - found.keys())
    if missing:
        erased = recorder.erasures(run_id, missing)
        if erased:  # `purge --force` on a run that could still be resumed: say so, not "missing"
            first = erased[min(erased)]
            raise CorruptLog(
                f"run {run_id} cannot be carried on: the data of {what or f'{len(erased)} of its unfinished token(s)'} "
                "was erased "
                f"({first.describe()}, e.g. {first.hash}); see `elspeth explain {run_id}`"
            )
        raise CorruptLog(f"{len(missing)} row payload(s) are missing from the payload store, e.g. {missing[0]}")
    altered = sorted(h for h, p in found.items() if not payload_matches(h, p))
    if altered:
        raise CorruptLog(f"{len(altered)} row payload(s) do not match their commitment, e.g. {altered[0]}")
    return {h: p.data for h, p in found.items()}
