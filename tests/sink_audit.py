"""What the audit trail says each sink was given, and whether the sink holds it: the check
behind 'no field is lost without a record' (tests/test_hostile_sinks.py and the property test)."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from landscape.db import Database
from landscape.postgres import PostgresRecorder
from statecharts import events as ev


@dataclass
class Audit:
    written: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # sink -> row indexes
    failed: dict[int, str] = field(default_factory=dict)  # row index -> recorded reason and detail
    diverted: dict[int, str] = field(default_factory=dict)  # row index -> why it left its first sink


def audit(db: Database, run_id: str) -> Audit:
    """Per sink, the source rows the log says it made durable (in order); per row, its failure."""
    out = Audit()
    rows: dict[str, int] = {}
    for stored in PostgresRecorder(db).read_events(run_id):
        e = stored.event
        if isinstance(e, ev.TokenCreated):
            rows[stored.entity_id] = e.row_index
        elif isinstance(e, ev.TokenCompleted | ev.TokenRouted | ev.TokenDiverted | ev.TokenQuarantined):
            if e.sink is not None:
                out.written[e.sink].append(rows[stored.entity_id])
            if isinstance(e, ev.TokenDiverted):
                out.diverted[rows[stored.entity_id]] = e.reason
            elif isinstance(e, ev.TokenQuarantined) and e.sink is None:
                # Quarantined and discarded (e.g. the type lock of observed sources): the
                # record of why is the row's account.
                out.failed[rows[stored.entity_id]] = e.reason
        elif isinstance(e, ev.TokenFailed):
            out.failed[rows[stored.entity_id]] = f"{e.reason}: {e.detail}"
    return out


def sink_rows(kind: str, where: str, table: str | None = None) -> list[dict[str, Any]]:
    """A sink's output as rows: CSV cells as text, JSON values, database columns."""
    if kind == "csv":
        with Path(where).open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if kind == "jsonl":
        return [json.loads(line) for line in Path(where).read_text(encoding="utf-8").splitlines() if line.strip()]
    if kind == "json":
        data = json.loads(Path(where).read_text(encoding="utf-8"))
        assert isinstance(data, list)
        return data
    url = where.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(f'SELECT * FROM "{table}"'))]
    finally:
        engine.dispose()


def _renderings(value: Any) -> set[Any]:
    """What a value may look like once a sink holds it (a CSV cell, a text column's cast)."""
    if value is None:
        return {None, ""}
    if isinstance(value, dict | list):
        return {json.dumps(value, ensure_ascii=False)}
    if isinstance(value, bool):
        return {value, str(value), str(value).lower(), int(value), str(int(value))}
    return {value, str(value), repr(value)}


def holds(stored: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether a stored row holds every field of `row` with its value, and nothing else."""
    if any(k not in stored or stored[k] not in _renderings(v) for k, v in row.items()):
        return False
    return all(stored[k] in (None, "") for k in stored if k not in row)


_POSITIONS = re.compile(r"field \d+ of the row|the row's fields? \d+(, \d+)*")


def assert_nothing_lost(a: Audit, source: list[dict[str, Any]], outputs: dict[str, list[dict[str, Any]]]) -> None:
    """Every row the log says a sink made durable is in that sink whole, and every other row
    has a recorded failure (or diversion) that names one of its fields."""
    for sink, indexes in a.written.items():
        stored = list(outputs.get(sink, []))
        assert len(stored) == len(indexes), f"sink {sink}: log says {len(indexes)} rows, it holds {len(stored)}"
        for i in indexes:
            match = next((s for s in stored if holds(s, source[i])), None)
            assert match is not None, f"sink {sink} lost a field of row {i}: {source[i]} not in {stored}"
            stored.remove(match)
    for i, why in {**a.failed, **a.diverted}.items():
        # By name when the settings name the field, else by position: a name the input chose is
        # row data, which a recorded reason never holds (docs/erasure.md).
        positions = {int(p) for m in _POSITIONS.finditer(why) for p in re.findall(r"\d+", m.group(0))}
        named = (
            not source[i] or any(f"'{k}'" in why for k in source[i]) or positions & set(range(1, len(source[i]) + 1))
        )
        assert named, f"row {i}: the reason names none of its fields: {why}"
    accounted = {i for indexes in a.written.values() for i in indexes} | set(a.failed)
    assert accounted == set(range(len(source))), f"rows unaccounted for: {set(range(len(source))) - accounted}"
