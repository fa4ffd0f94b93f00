"""Each plugin's documented behaviour, and what it does with bad input."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine.plugins.protocol import PluginConfigError, PluginError, RowError, SourceItem
from engine.plugins.registry import build_plugin
from engine.plugins.schema import normalise_header


def _read(kind: str, options: dict[str, Any]) -> list[SourceItem]:
    source = build_plugin("source", kind, options)
    return [i for i in source.read(0) if i is not None]


# -- sources ---------------------------------------------------------------------------------


def test_csv_headers_are_normalised_and_values_coerced(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("Customer ID!!,  Amount (USD)  ,Class\nC-1,150.50,if\n")
    schema = {"mode": "flexible", "fields": ["customer_id: str", "amount_usd: float"]}
    [item] = _read("csv", {"path": str(tmp_path / "in.csv"), "schema": schema})
    assert item.row == {"customer_id": "C-1", "amount_usd": 150.5, "class_": "if"}


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Amount ($)", "amount"),
        ("Notes / Comments", "notes_comments"),
        ("2nd Value", "_2nd_value"),
        ("class", "class_"),
    ],
)
def test_header_normalisation(raw: str, normalised: str) -> None:
    assert normalise_header(raw) == normalised


def test_a_row_that_does_not_fit_the_schema_is_quarantined_as_read(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id,amount\n1,10\n2,ten\n3,\n")
    schema = {"mode": "fixed", "fields": ["id: int", "amount: int"]}
    items = _read("csv", {"path": str(tmp_path / "in.csv"), "schema": schema})
    assert items[0].row == {"id": 1, "amount": 10}
    assert items[1].row is None and items[1].raw == {"id": "2", "amount": "ten"}
    assert items[1].error == "field 'amount' is not an int: found a str of 3 characters"
    assert items[2].row is None and "empty" in (items[2].error or "")


def test_ragged_csv_rows_are_quarantined_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id,name\n1,a\n2,b,extra\n3,c\n")
    items = _read("csv", {"path": str(tmp_path / "in.csv")})
    assert [i.row for i in items] == [{"id": "1", "name": "a"}, None, {"id": "3", "name": "c"}]
    assert items[1].raw == {"__raw_line__": "2,b,extra", "__line_number__": 3, "__row_number__": 2}


def test_undecodable_bytes_quarantine_that_row_only(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_bytes(b"id,name\n1,a\n2,\xff\xfe\n3,c\n")
    items = _read("csv", {"path": str(tmp_path / "in.csv")})
    assert items[0].row == {"id": "1", "name": "a"}
    assert items[1].row is None and "utf-8" in (items[1].error or "")
    assert items[2].row == {"id": "3", "name": "c"}


def test_read_continues_after_a_cursor(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(10)))
    source = build_plugin("source", "csv", {"path": str(tmp_path / "in.csv")})
    items = [i for i in source.read(7) if i is not None]
    assert [i.index for i in items] == [7, 8, 9] and items[0].row == {"id": "7"}


def test_missing_input_file_is_a_clear_error(tmp_path: Path) -> None:
    source = build_plugin("source", "csv", {"path": str(tmp_path / "nope.csv")})
    with pytest.raises(PluginError, match=r"nope\.csv"):
        source.fingerprint()


def test_a_json_source_that_is_not_an_array_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('{"a": 1}')
    with pytest.raises(PluginError, match="expected a JSON array"):
        _read("json", {"path": str(tmp_path / "in.json")})


def test_malformed_jsonl_lines_are_quarantined(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"a": 1}\n{oops\n{"a": 3}\n')
    items = _read("json", {"path": str(tmp_path / "in.jsonl")})
    assert [i.row for i in items] == [{"a": 1}, None, {"a": 3}]
    assert items[1].raw == {"__raw_line__": "{oops", "__line_number__": 2}


def test_unknown_options_are_refused_by_name() -> None:
    with pytest.raises(PluginConfigError) as err:
        build_plugin("transform", "truncate", {"fields": {"a": 3}, "sufix": "."})
    assert err.value.path == "sufix" and "allowed" in err.value.message


# -- transforms ------------------------------------------------------------------------------


def test_field_mapper() -> None:
    t = build_plugin("transform", "field_mapper", {"mapping": {"a": "x"}, "select_only": True})
    assert t.process({"a": 1, "b": 2}) == {"x": 1}
    strict = build_plugin("transform", "field_mapper", {"mapping": {"z": "x"}, "strict": True})
    with pytest.raises(RowError):
        strict.process({"a": 1})


def test_truncate_fits_value_and_suffix_in_the_maximum() -> None:
    t = build_plugin("transform", "truncate", {"fields": {"d": 8}, "suffix": "..."})
    row = {"d": "abcdefghijkl"}
    assert t.process(row) == {"d": "abcde..."}
    assert row == {"d": "abcdefghijkl"}  # the input is not mutated


def test_keyword_filter_is_a_row_error_naming_the_pattern() -> None:
    t = build_plugin("transform", "keyword_filter", {"fields": ["n"], "blocked_patterns": ["(?i)secret"]})
    assert t.process({"n": "fine"}) == {"n": "fine"}
    with pytest.raises(RowError, match="secret"):
        t.process({"n": "Top SECRET"})


def test_json_explode() -> None:
    t = build_plugin("transform", "json_explode", {"array_field": "items"})
    assert t.process({"o": 1, "items": ["a", "b"]}) == [
        {"o": 1, "item": "a", "item_index": 0},
        {"o": 1, "item": "b", "item_index": 1},
    ]
    with pytest.raises(RowError, match="empty"):
        t.process({"o": 1, "items": []})


# -- aggregations ----------------------------------------------------------------------------


def test_batch_stats() -> None:
    a = build_plugin("aggregation", "batch_stats", {"value_field": "v", "group_by": "g"})
    result = a.flush([{"v": 1, "g": "x"}, {"v": 2, "g": "x"}, {"v": float("nan"), "g": "x"}, {"v": "?", "g": "x"}])
    assert result.rows == [
        {"count": 2, "sum": 3, "batch_size": 4, "mean": 1.5, "g": "x",
         "skipped_non_finite": 1, "skipped_non_finite_indices": [2]},
    ]  # fmt: skip
    with pytest.raises(RowError, match="mixes"):
        a.flush([{"v": 1, "g": "x"}, {"v": 1, "g": "y"}])


def test_batch_replicate_quarantines_rows_out_of_range() -> None:
    a = build_plugin("aggregation", "batch_replicate", {"max_copies": 3})
    result = a.flush([{"id": 1, "copies": 2}, {"id": 2, "copies": 9}, {"id": 3}])
    assert result.rows == [
        {"id": 1, "copies": 2, "copy_index": 0},
        {"id": 1, "copies": 2, "copy_index": 1},
        {"id": 3, "copy_index": 0},
    ]
    assert [i for i, _ in result.rejected] == [1]


# -- sinks -----------------------------------------------------------------------------------


def test_a_sink_path_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    sink = build_plugin("sink", "csv", {"path": str(tmp_path / "missing" / "out.csv")})
    with pytest.raises(PluginError, match="does not exist"):
        sink.open("run", None)


@pytest.mark.parametrize("kind", ["csv", "json", "jsonl"])
def test_a_file_sink_resumes_at_its_durable_position(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"out.{kind}"
    sink = build_plugin("sink", kind, {"path": str(path)})
    sink.open("run", None)
    sink.write("t1", {"a": 1, "b": "x"})
    durable = sink.flush()
    sink.write("t2", {"a": 2, "b": "y"})
    sink.flush()  # written, but the crash comes before the events recording it commit
    sink.release()

    again = build_plugin("sink", kind, {"path": str(path)})
    again.open("run", durable)
    again.write("t2", {"a": 2, "b": "y"})
    again.flush()
    again.close()
    text = path.read_bytes().decode()
    if kind == "csv":
        assert text == "a,b\r\n1,x\r\n2,y\r\n"
    elif kind == "json":
        assert json.loads(text) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    else:
        assert [json.loads(line) for line in text.splitlines()] == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]


def test_csv_sink_uses_the_schema_fields_as_header(tmp_path: Path) -> None:
    sink = build_plugin(
        "sink", "csv", {"path": str(tmp_path / "o.csv"), "schema": {"mode": "fixed", "fields": ["b: str", "a: int"]}}
    )
    sink.open("run", None)
    # never written without c; c is not a name the settings spell, so its position is recorded
    with pytest.raises(RowError, match=r"the row's field 2: not among the columns of .* \(b, a\)"):
        sink.write("t", {"a": 1, "c": 3})
    sink.write("t", {"a": 1})
    sink.flush()
    sink.close()
    assert (tmp_path / "o.csv").read_bytes().decode() == "b,a\r\n,1\r\n"


def test_database_sink_resume_writes_again_what_the_log_never_recorded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'out.db'}"
    options = {"url": url, "table": "deals", "if_exists": "replace"}
    sink = build_plugin("sink", "database", options)
    sink.open("run-1", None)
    sink.write("t1", {"id": 1, "name": "a"})
    assert sink.flush() == 1
    sink.release()  # died before the log recorded the flush: its durable position is 0
    again = build_plugin("sink", "database", options)
    again.open("run-1", 0)  # t1's row goes; the resume delivers t1 (holding another row now) and t2
    again.write("t1", {"id": 1, "name": "a2"})
    again.write("t2", {"id": 2, "name": "b"})
    assert again.flush() == 2
    again.close()
    con = sqlite3.connect(tmp_path / "out.db")
    assert con.execute("SELECT id, name FROM deals ORDER BY id").fetchall() == [(1, "a2"), (2, "b")]
    con.close()


def test_a_database_sink_that_cannot_connect_is_a_clear_error(tmp_path: Path) -> None:
    sink = build_plugin("sink", "database", {"url": f"sqlite:///{tmp_path}/missing/x.db", "table": "t"})
    with pytest.raises(PluginError, match="cannot connect"):
        sink.open("run", None)
