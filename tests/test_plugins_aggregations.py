"""Aggregations: batch_stats and batch_replicate on their documented cases and the corpus."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest

from engine.plugins.protocol import PluginConfigError, RowError
from engine.plugins.registry import build_plugin

CORPUS = Path(__file__).resolve().parent / "corpus"  # the prior system's conformance corpus (see its README)


def stats(rows: list[dict[str, Any]], **options: Any) -> list[dict[str, Any]]:
    result = build_plugin("aggregation", "batch_stats", {"value_field": "v", **options}).flush(rows)
    assert result.rejected == []
    rows_out: list[dict[str, Any]] = result.rows
    return rows_out


def test_batch_stats_columns_and_int_sum() -> None:
    out = stats([{"v": 1, "g": "a"}, {"v": 2, "g": "a"}, {"v": None, "g": "a"}], group_by="g")
    assert out == [{"count": 2, "sum": 3, "batch_size": 3, "mean": 1.5, "g": "a"}]
    assert list(out[0]) == ["count", "sum", "batch_size", "mean", "g"]
    assert isinstance(out[0]["sum"], int)


def test_batch_stats_floats_without_mean() -> None:
    assert stats([{"v": 1}, {"v": 0.5}], compute_mean=False) == [{"count": 2, "sum": 1.5, "batch_size": 2}]


def test_batch_stats_skips_and_reports_non_finite_values() -> None:
    out = stats([{"v": 1}, {"v": math.nan}, {"v": math.inf}, {"v": 3}, {"v": "x"}, {"v": True}])
    assert out == [{"count": 2, "sum": 4, "batch_size": 6, "mean": 2.0,
                    "skipped_non_finite": 2, "skipped_non_finite_indices": [1, 2]}]  # fmt: skip


def test_batch_stats_without_numeric_values_has_no_mean() -> None:
    assert stats([{"v": "x"}]) == [{"count": 0, "sum": 0, "batch_size": 1, "mean": None}]


def test_batch_stats_without_mean_may_group_by_a_field_named_mean() -> None:
    a = build_plugin("aggregation", "batch_stats", {"value_field": "v", "group_by": "mean", "compute_mean": False})
    assert a.flush([{"v": 1, "mean": "x"}, {"v": 2, "mean": "x"}]).rows == [
        {"count": 2, "sum": 3, "batch_size": 2, "mean": "x"}
    ]


def test_a_value_field_in_no_row_of_the_batch_is_a_batch_error() -> None:
    a = build_plugin("aggregation", "batch_stats", {"value_field": "amout"})
    with pytest.raises(RowError, match=r"^field 'amout' is in none of the batch's 2 rows$"):
        a.flush([{"amount": 1}, {"amount": 2}])
    assert a.flush([{"amout": "x"}, {"amout": 2}]).rows[0]["count"] == 1  # in a row, one not a number
    assert a.flush([{"amout": None}, {"amount": 2}]).rows[0]["count"] == 0  # in a row, empty


def test_batch_stats_where_a_value_is_text_that_reads_as_a_number_is_a_batch_error() -> None:
    """A CSV source without a schema: every cell is text, and every batch's statistics were
    count 0, sum 0, the run completed (a review). With one real number in the batch, that
    number's statistics alone, the text left out without a word (another): any such text fails
    the batch; text that reads as no number is counted out, as before."""
    with pytest.raises(RowError, match=r"^3 of the batch's values of 'v' are text that reads as a number \(the first "
                                       r"at position 0 in the batch; 0 are numbers\); a CSV column is text unless the "
                                       r"source's schema declares it \('v: float'\)$"):  # fmt: skip
        stats([{"v": "51"}, {"v": " 7.5"}, {"v": "-1e3"}, {"v": None}])
    with pytest.raises(RowError, match=r"^1 of the batch's values of 'v' are text"):  # one cell not a number
        stats([{"v": "not-a-number"}, {"v": "51"}])
    with pytest.raises(RowError, match=r"^2 of the batch's .* \(the first at position 1 in the batch; 1 are numbers"):
        stats([{"v": 5}, {"v": "7"}, {"v": "9"}])
    with pytest.raises(RowError, match=r"^1 of the batch's .* 2 are numbers"):
        stats([{"v": 5}, {"v": math.nan}, {"v": "9"}])
    assert stats([{"v": "x"}, {"v": "y"}])[0]["count"] == 0  # no text that reads as a number: counted out
    assert stats([{"v": "1,234"}, {"v": 2}])[0]["count"] == 1  # (nor does a thousands separator read as one)


def test_batch_stats_out_of_a_floats_range_is_a_batch_error_not_a_crash() -> None:
    """A valid 400-digit int made the mean (or a float added to it) raise OverflowError: the run
    failed, and failed again at every resume."""
    with pytest.raises(RowError, match=r"^the mean of 'v' is out of a float's range$"):
        stats([{"v": 10**400}, {"v": 1}])
    with pytest.raises(RowError, match=r"^the sum of 'v' is out of a float's range$"):
        stats([{"v": 0.5}, {"v": 10**400}], compute_mean=False)
    assert stats([{"v": 10**400}, {"v": 1}], compute_mean=False)[0]["sum"] == 10**400 + 1


def test_a_batch_mixing_group_values_is_a_batch_error() -> None:
    with pytest.raises(RowError, match=r"^the batch mixes 2 different values of 'g'$"):
        stats([{"v": 1, "g": "a"}, {"v": 2, "g": "b"}], group_by="g")


def test_batch_replicate() -> None:
    a = build_plugin("aggregation", "batch_replicate", {"max_copies": 3})
    result = a.flush([{"id": 1, "copies": 2}, {"id": 2, "copies": 9}, {"id": 3}, {"id": 4, "copies": "2"},
                      {"id": 5, "copies": 0}, {"id": 6, "copies": None}])  # fmt: skip
    assert result.rows == [
        {"id": 1, "copies": 2, "copy_index": 0},
        {"id": 1, "copies": 2, "copy_index": 1},
        {"id": 3, "copy_index": 0},
        {"id": 6, "copies": None, "copy_index": 0},
    ]
    assert [i for i, _ in result.rejected] == [1, 3, 4]
    assert "from 1 to 3" in result.rejected[0][1]


def test_batch_replicate_refuses_a_batch_asking_for_more_copies_than_a_step_may_make(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 rows asking for 10,000 copies each took 6.8 GB (a hostile review): the copies asked
    for are counted before any is made."""
    from engine.plugins import aggregations

    monkeypatch.setattr(aggregations, "MAX_OUTPUT_ROWS", 10)
    a = build_plugin("aggregation", "batch_replicate", {})
    with pytest.raises(RowError, match=r"^the batch asks for 12 copies, more than the 10 one step may make$"):
        a.flush([{"copies": 6}, {"copies": 6}, {"copies": "x"}])
    assert len(a.flush([{"copies": 5}, {"copies": 5}, {"copies": 10**9}]).rows) == 10  # a refused row asks nothing


def test_batch_replicate_options() -> None:
    a = build_plugin("aggregation", "batch_replicate",
                     {"copies_field": "n", "default_copies": 2, "include_copy_index": False})  # fmt: skip
    assert a.flush([{"id": 1}, {"id": 2, "n": 1}]).rows == [{"id": 1}, {"id": 1}, {"id": 2, "n": 1}]


@pytest.mark.parametrize(
    ("name", "options", "path"),
    [
        ("batch_stats", {}, "value_field"),
        ("batch_stats", {"value_field": "v", "compute_mean": "yes"}, "compute_mean"),
        # a group_by field the output's own would overwrite (its count of 3 read 7)
        ("batch_stats", {"value_field": "v", "group_by": "count"}, "group_by"),
        ("batch_stats", {"value_field": "v", "group_by": "mean"}, "group_by"),
        ("batch_stats", {"value_field": "v", "group_by": "skipped_non_finite"}, "group_by"),
        ("batch_replicate", {"max_copies": 0}, "max_copies"),
        ("batch_replicate", {"default_copies": 5, "max_copies": 2}, "default_copies"),
        ("batch_replicate", {"copies": 2}, "copies"),
    ],
)
def test_bad_aggregation_options(name: str, options: dict[str, Any], path: str) -> None:
    with pytest.raises(PluginConfigError) as err:
        build_plugin("aggregation", name, options)
    assert err.value.path == path


def _example(name: str, source_fields: list[str]) -> list[dict[str, Any]]:
    source = build_plugin("source", "csv", {"path": str(CORPUS / "examples" / name / "input.csv"),
                                            "schema": {"mode": "fixed", "fields": source_fields}})  # fmt: skip
    return [i.row for i in source.read() if i is not None and i.row is not None]


def _expected(path: str) -> list[dict[str, str]]:
    with (CORPUS / "expected/examples" / path).open(newline="") as f:
        return list(csv.DictReader(f))


def _as_cells(rows: list[dict[str, Any]], header: list[str]) -> list[dict[str, str]]:
    return [{k: "" if r.get(k) is None else str(r[k]) for k in header} for r in rows]


def test_batch_aggregation_example_in_batches_of_five() -> None:
    rows = _example("batch_aggregation", ["id: int", "date: str", "category: str", "amount: int", "region: str"])
    agg = build_plugin("aggregation", "batch_stats", {"value_field": "amount", "group_by": "category"})
    out = [r for i in range(0, len(rows), 5) for r in agg.flush(rows[i : i + 5]).rows]
    expected = _expected("batch_aggregation/output/batch_summaries.csv")
    assert _as_cells(out, list(expected[0])) == expected


def test_deaggregation_example_in_batches_of_three() -> None:
    rows = _example("deaggregation", ["id: int", "name: str", "copies: int", "category: str"])
    agg = build_plugin("aggregation", "batch_replicate", {"copies_field": "copies", "default_copies": 1})
    out = [r for i in range(0, len(rows), 3) for r in agg.flush(rows[i : i + 3]).rows]
    expected = _expected("deaggregation/output/replicated.csv")
    assert _as_cells(out, list(expected[0])) == expected


def test_batch_replicate_names_each_copys_one_source() -> None:
    rows = [{"copies": 2}, {"copies": 0}, {"copies": 1}]
    result = build_plugin("aggregation", "batch_replicate", {}).flush(rows)
    assert result.sources == [[0], [0], [2]] and [i for i, _ in result.rejected] == [1]


def test_sources_that_cannot_be_the_outputs_parents_fail_the_batch() -> None:
    from engine.batching import _bad_sources
    from engine.plugins.protocol import BatchResult

    rows: list[dict[str, Any]] = [{}, {}]
    assert _bad_sources(BatchResult(rows), 3, {}) is None  # every input: as for a sum
    assert _bad_sources(BatchResult(rows, sources=[[0], [1, 2]]), 3, {}) is None
    for sources, rejected in [
        ([[0]], {}),
        ([[0], []], {}),
        ([[0], [3]], {}),
        ([[0], [-1]], {}),
        ([[0], [1]], {1: "x"}),
    ]:
        assert _bad_sources(BatchResult(rows, sources=sources), 3, rejected) is not None, sources


def test_passthrough_takes_only_each_input_continuing_as_itself() -> None:
    from engine.batching import _not_passthrough
    from engine.plugins.protocol import BatchResult

    rows: list[dict[str, Any]] = [{}, {}]
    assert _not_passthrough(BatchResult(rows), 2) is None
    assert _not_passthrough(BatchResult(rows, sources=[[0], [1]]), 2) is None
    assert "2 in, 1 out" in str(_not_passthrough(BatchResult(rows[:1]), 2))
    assert "rejected input 2" in str(_not_passthrough(BatchResult(rows, rejected=[(1, "no")]), 2))
    for sources in ([[0], [0]], [[1], [0]], [[0], [0, 1]]):
        assert "the input at its place" in str(_not_passthrough(BatchResult(rows, sources=sources), 2)), sources
