"""Field order is part of the output, and a sink that got no rows writes no file (SETTINGS.md,
Schemas): through the engine, to the files a reader of the prior system's outputs opens."""

from __future__ import annotations

from pathlib import Path

from landscape.db import Database
from tests.engine_harness import assert_invariants, run, write_csv

PIPELINE = """
source:
  plugin: csv
  on_success: raw
  options:
    path: in.csv
    schema: {mode: flexible, fields: ['id: int', 'amount: int']}
    on_validation_failure: quarantine
transforms:
- name: rename
  plugin: field_mapper
  input: raw
  on_success: renamed
  on_error: discard
  options: {mapping: {name: customer, region: id_region}}
gates:
- name: size
  input: renamed
  condition: row['amount'] > 100
  routes: {'true': big, 'false': small}
sinks:
  big: {plugin: csv, options: {path: out/big.csv}}
  small: {plugin: json, options: {path: out/small.json}}
  quarantine: {plugin: csv, options: {path: out/quarantine.csv}}
"""


def test_renamed_fields_come_last_in_the_files_and_a_sink_without_rows_writes_none(
    db: Database, tmp_path: Path
) -> None:
    write_csv(tmp_path / "in.csv", ["id", "name", "amount", "region"], [[1, "Ann", 500, "N"], [2, "Bo", 900, "S"]])
    result = run(db, tmp_path, PIPELINE)
    assert_invariants(result.fold)
    text = (tmp_path / "out/big.csv").read_text(encoding="utf-8")
    # The header a positional reader sees: renamed fields at the end, in the order of `mapping`.
    assert text.splitlines() == ["id,amount,customer,id_region", "1,500,Ann,N", "2,900,Bo,S"]
    # Neither `small` nor `quarantine` got a row: no file, not even an empty array or a header.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["big.csv"]
    assert result.outcomes() == {"routed": 2}


def test_json_objects_keep_the_same_field_order(db: Database, tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", ["region", "id", "name", "amount"], [[" W", 3, "Cy", 5], ["E", "x", "Di", 1]])
    result = run(db, tmp_path, PIPELINE)
    rows = result.rows("out/small.json")
    assert [list(r) for r in rows] == [["id", "amount", "customer", "id_region"]]
    assert list(result.rows("out/quarantine.csv")[0]) == ["region", "id", "name", "amount"]  # as read
    assert not (tmp_path / "out/big.csv").exists()
