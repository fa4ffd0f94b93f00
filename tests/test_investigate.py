"""The investigator's commands as users run them: explain (on the verified events), runs, show,
replay --json, the run summary, the checks before any store exists, and db stop."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from landscape.db import Database
from landscape.queries import ROWS_BY_OUTCOME, ROWS_UNFINISHED, lineage, without_nested_loops
from tests.engine_harness import write_csv
from tests.test_cli import PIPELINE, ROOT, elspeth, one_line_error

FORK = """
source:
  plugin: csv
  on_success: raw
  options: {path: in.csv, schema: {mode: fixed, fields: ['id: int', 'v: int', 'note: str']}, on_validation_failure: bad}
gates:
- name: split
  input: raw
  condition: 'True'
  routes: {'true': fork}
  fork_to: [a, b]
- name: check
  input: b
  condition: "row['note'] != 'boom' or row['v'] / 0"
  routes: {'true': b_done, 'false': b_done}
  on_error: bad
transforms:
- name: rename
  plugin: field_mapper
  input: a
  on_success: a_done
  on_error: discard
  options: {mapping: {v: value}}
coalesce:
- name: join
  branches: {a: a_done, b: b_done}
  policy: require_all
  merge: nested
  on_success: out
sinks:
  out: {plugin: json, options: {path: out/out.jsonl, format: jsonl}}
  bad: {plugin: json, options: {path: out/bad.jsonl, format: jsonl}}
"""


def _run(db: Database, work: Path, *extra: str) -> str:
    proc = elspeth("run", "-s", "settings.yaml", *extra, cwd=work, db=db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split()[1]


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def fork(tmp_path: Path) -> Path:
    # row 3 has one field too many: quarantined with its __row_number__; row 2 makes `check` fail
    (tmp_path / "in.csv").write_text("id,v,note\r\n1,3,ok\r\n2,9,boom\r\n3,4,x,extra\r\n4,5,fine\r\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "settings.yaml").write_text(FORK)
    return tmp_path


def test_explain_json_is_built_from_the_events_with_a_stable_shape(db: Database, fork: Path) -> None:
    run_id = _run(db, fork)
    out = _json(elspeth("explain", run_id, "--row", "1", "--json", cwd=fork, db=db))
    assert set(out) == {"run_id", "events_verified", "head", "run_status", "checkpoints", "rows"}
    assert out["run_status"] == "completed"
    assert out["checkpoints"]["newest_size"] == out["events_verified"] and out["checkpoints"]["signatures_checked"]
    (row,) = out["rows"]
    assert set(row) == {"row", "row_index", "tokens", "coalesces", "batches"}
    assert (row["row"], row["row_index"]) == (1, 0)
    tokens = {t["token_id"]: t for t in row["tokens"]}
    assert set(tokens) == {"r0", "r0.a", "r0.b", "r0+join"}
    assert set(tokens["r0"]) == {"token_id", "row_index", "branch", "parents", "entries", "outcome", "state"}
    kinds = [e["kind"] for e in tokens["r0.a"]["entries"]]
    assert kinds == ["created", "step", "held", "ended"]
    created, step = tokens["r0.a"]["entries"][:2]
    assert created["data"] == {
        "hash": created["data"]["hash"],
        "status": "ok",
        "value": {"id": 1, "v": 3, "note": "ok"},
        "why": None,
    }
    assert created["via"] == "fork" and created["parents"] == ["r0"]
    # the field_mapper's step: what changed, from the step's input and output payloads
    assert step["node"] == "rename" and step["input_hash"] != step["output_hash"]
    assert step["changes"] == [
        {"field": "v", "change": "removed", "old": 3, "new": None},
        {"field": "value", "change": "added", "old": None, "new": 3},
    ]
    gate = tokens["r0.b"]["entries"][1]
    assert gate == {"kind": "gate", "seq": gate["seq"], "time": gate["time"], "node": "check",
                    "condition": "row['note'] != 'boom' or row['v'] / 0", "route": "true", "next": "b_done"}  # fmt: skip
    # the merge: its parents are the branches (the events' TokenCreated.parents)
    merged = tokens["r0+join"]["entries"][0]
    assert merged["via"] == "merge" and merged["parents"] == ["r0.a", "r0.b"]
    assert row["coalesces"][0]["outcome"] == "merged" and row["coalesces"][0]["arrived"] == ["a", "b"]
    # where it landed: the flush that made it durable, and the bytes it covered hold the row
    end = tokens["r0+join"]["entries"][-1]
    assert end["outcome"] == "completed" and end["sink"] == "out"
    landed = end["landed"]
    data = (fork / "out/out.jsonl").read_bytes()[landed["from_position"] : landed["to_position"]]
    assert {"a": {"id": 1, "value": 3, "note": "ok"}, "b": {"id": 1, "v": 3, "note": "ok"}} in [
        json.loads(line) for line in data.splitlines()
    ]


def test_explain_names_the_fields_a_union_merge_found_in_more_than_one_branch(db: Database, fork: Path) -> None:
    """SETTINGS: union merges flat, later branch wins, collisions recorded: which fields were
    overwritten is what an investigator of the merged row asks first."""
    # branch a renames v onto note, so the branches' notes differ (their ids do not: no collision)
    (fork / "settings.yaml").write_text(
        FORK.replace("merge: nested", "merge: union").replace("{v: value}", "{v: note}")
    )
    run_id = _run(db, fork)
    out = _json(elspeth("explain", run_id, "--row", "1", "--json", cwd=fork, db=db))
    assert out["rows"][0]["coalesces"][0]["collisions"] == ["note"]
    text = elspeth("explain", run_id, "--row", "1", cwd=fork, db=db).stdout
    assert "; fields the branches gave different values: note" in text, text


def test_the_projection_lineage_reads_token_parents(db: Database, fork: Path) -> None:
    run_id = _run(db, fork)
    found = {t.token_id: t.parents for t in lineage(db, run_id, row_index=0).tokens}
    assert found == {"r0": [], "r0.a": ["r0"], "r0.b": ["r0"], "r0+join": ["r0.a", "r0.b"]}


def test_row_numbers_are_the_quarantine_records_row_numbers(db: Database, fork: Path) -> None:
    run_id = _run(db, fork)
    (record,) = [json.loads(x) for x in (fork / "out/bad.jsonl").read_text().splitlines() if "__row_number__" in x]
    n = record["__row_number__"]
    out = _json(elspeth("explain", run_id, "--row", str(n), "--json", cwd=fork, db=db))
    (token,) = out["rows"][0]["tokens"]
    assert token["entries"][0]["data"]["value"] == record and token["outcome"] == "quarantined"
    text = elspeth("explain", run_id, "--row", str(n), cwd=fork, db=db).stdout
    assert f"row {n} (row_index {n - 1})" in text and "quarantined" in text
    assert elspeth("explain", run_id, "--row", "0", cwd=fork, db=db).returncode == 2  # counted from 1


def test_explain_by_token_and_by_where(db: Database, fork: Path) -> None:
    run_id = _run(db, fork)
    by_token = _json(elspeth("explain", run_id, "--token", "r3.b", "--json", cwd=fork, db=db))
    assert [r["row"] for r in by_token["rows"]] == [4]
    where = _json(elspeth("explain", run_id, "--where", "row['note'] == 'boom'", "--json", cwd=fork, db=db))
    assert [r["row"] for r in where["rows"]] == [2]
    text = elspeth("explain", run_id, "--where", "row['note'] == 'boom'", cwd=fork, db=db).stdout
    # the gate's row error, sent to on_error: diverted, with where it landed
    assert "diverted at check: condition failed: division by zero — landed in sink bad" in text
    err = one_line_error(elspeth("explain", run_id, "--where", "row['id'] == 99", cwd=fork, db=db), 1)
    assert "has no row matching" in err
    # row 3 was quarantined as a line that did not parse: its data has no 'id' to compare, which is
    # said (an investigator looked for a quarantined row, and was told only that none matched)
    assert "(1 row on which the expression could not be evaluated (a field missing" in err, err
    err = one_line_error(elspeth("explain", run_id, "--where", "__import__('os')", cwd=fork, db=db), 2)
    assert "--where" in err
    assert "no token" in one_line_error(elspeth("explain", run_id, "--token", "nope", cwd=fork, db=db), 1)


def test_explain_where_says_how_many_rows_gave_no_true_or_false(db: Database, fork: Path) -> None:
    """A row on which the expression gave a number or text is no match, as one on which it failed
    is, and is counted and said the same way (a review: `row['v']` matched nothing, unsaid)."""
    run_id = _run(db, fork)
    err = one_line_error(elspeth("explain", run_id, "--where", "row['note']", cwd=fork, db=db), 1)
    assert "has no row matching" in err, err
    # rows 1, 2 and 4 give their note; row 3 (quarantined: a line that did not parse) has none
    assert "3 rows on which the expression gave neither true nor false (str), taken as no match" in err, err
    assert "1 row on which the expression could not be evaluated" in err, err
    proc = elspeth("explain", run_id, "--where", "row['v'] == 9 or row['v']", "--json", cwd=fork, db=db)
    assert [r["row"] for r in _json(proc)["rows"]] == [2]
    assert "2 rows on which the expression gave neither true nor false (int), taken as no match" in proc.stderr
    err = one_line_error(elspeth("explain", run_id, "--where", "row.get('nope')", cwd=fork, db=db), 1)
    assert "4 rows on which the expression gave neither true nor false (null), taken as no match" in err, err


def test_explain_where_says_when_a_quarantined_row_was_searched_as_read(db: Database, work_pipeline: Path) -> None:
    """Row 3 (v: 'x') was quarantined: its fields are the text the source read, so `row['id'] == 3`
    is false for its '3', and the investigator was told only that no row matched (a review)."""
    run_id = _run(db, work_pipeline)
    err = one_line_error(elspeth("explain", run_id, "--where", "row['id'] == 3", cwd=work_pipeline, db=db), 1)
    assert "has no row matching" in err, err
    assert "1 of the rows that did not match was quarantined by the source: its fields are as it read" in err, err
    found = _json(elspeth("explain", run_id, "--where", "row['id'] == '3'", "--json", cwd=work_pipeline, db=db))
    assert [r["row"] for r in found["rows"]] == [3]


def _as_superuser(db: Database, sql: str, params: tuple[Any, ...]) -> None:
    with db.connect() as conn:
        conn.execute("SET session_replication_role = replica")  # past the payloads trigger
        conn.execute(sql, params)
        conn.commit()


def test_explain_says_plainly_when_data_is_altered_or_missing(db: Database, fork: Path) -> None:
    run_id = _run(db, fork)
    out = _json(elspeth("explain", run_id, "--row", "4", "--json", cwd=fork, db=db))
    h = out["rows"][0]["tokens"][0]["entries"][0]["data"]["hash"]
    forged = b'{"id":4,"v":5,"note":"FORGED"}'
    _as_superuser(db, "UPDATE payloads SET data = %s WHERE hash = %s", (forged, bytes.fromhex(h)))
    text = elspeth("explain", run_id, "--row", "4", cwd=fork, db=db)
    assert text.returncode == 0 and "DATA ALTERED" in text.stdout and "FORGED" not in text.stdout
    data = _json(elspeth("explain", run_id, "--row", "4", "--json", cwd=fork, db=db))["rows"][0]["tokens"][0]
    assert data["entries"][0]["data"] == {"hash": h, "status": "altered", "value": None, "why": None}
    _as_superuser(db, "DELETE FROM payloads WHERE hash = %s", (bytes.fromhex(h),))  # with no erasure record
    text = elspeth("explain", run_id, "--row", "4", cwd=fork, db=db)
    assert "DATA MISSING" in text.stdout


def test_a_forged_projection_does_not_change_explain(db: Database, fork: Path) -> None:
    run_id = _run(db, fork)
    before = elspeth("explain", run_id, "--row", "2", "--json", cwd=fork, db=db).stdout
    with db.connect() as conn:
        conn.execute("UPDATE token_outcomes SET outcome = 'completed', reason = NULL WHERE run_id = %s", (run_id,))
        conn.execute("UPDATE node_states SET output_hash = input_hash WHERE run_id = %s", (run_id,))
        conn.execute("DELETE FROM token_parents WHERE run_id = %s", (run_id,))
        conn.commit()
    assert elspeth("explain", run_id, "--row", "2", "--json", cwd=fork, db=db).stdout == before


def test_runs_filters_and_show_ties_each_sink_file_to_the_run(db: Database, work_pipeline: Path) -> None:
    work = work_pipeline
    first = _run(db, work)
    second = _run(db, work)
    listed = _json(elspeth("runs", "--json", "--limit", "1", cwd=work, db=db))
    assert [r["run_id"] for r in listed] == [second]
    assert set(listed[0]) == {"run_id", "status", "started_at", "ended_at", "resumes", "rows", "settings",
                              "writer_alive"}  # fmt: skip
    recent = {r["run_id"] for r in _json(elspeth("runs", "--json", "--since", "1h", cwd=work, db=db))}
    assert {first, second} <= recent
    assert _json(elspeth("runs", "--json", "--since", "2999-01-01", cwd=work, db=db)) == []
    assert _json(elspeth("runs", "--json", "--status", "failed", cwd=work, db=db)) == []
    assert "--since" in one_line_error(elspeth("runs", "--since", "yesterday", cwd=work, db=db), 2)
    for far in ("99999999d", "1" + "0" * 30 + "s", "9" * 5000 + "d", "0001-01-01"):  # further back than any: all
        assert {first, second} <= {
            r["run_id"] for r in _json(elspeth("runs", "--json", "--since", far, cwd=work, db=db))
        }

    shown = _json(elspeth("show", second, "--json", cwd=work, db=db))
    assert _json(elspeth("runs", second, "--json", cwd=work, db=db)) == shown
    assert set(shown) == {"run_id", "status", "started_at", "ended_at", "seconds", "resumes", "writer_alive",
                          "settings", "working_dir", "source_fingerprint", "last_seq", "rows", "tokens",
                          "tokens_pending", "nodes", "artifacts", "lifecycle"}  # fmt: skip
    assert shown["rows"] == {"in": 3, "written": {"bad": 1, "high": 1, "low": 1}, "quarantined": 1, "failed": 0,
                             "diverted": 0, "discarded": 0, "unfinished": 0}  # fmt: skip
    assert shown["settings"]["path"] == "settings.yaml" and len(shown["settings"]["hash"]) == 64
    nodes = {n["node"]: n for n in shown["nodes"]}
    assert nodes["big"]["processed"] == 2 and set(nodes["big"]) == {"node", "kind", "plugin", "config_hash",
                                                                     "processed", "outcomes", "total_us", "mean_us",
                                                                     "groups", "late_arrivals"}  # fmt: skip
    assert [e["event"] for e in shown["lifecycle"]] == ["RunCreated", "RunStarted", "RunCompleted"]
    files = {a["sink"]: a for a in shown["artifacts"]}
    high = files["high"]
    content = (work / "out/high.csv").read_bytes()
    assert high["file"] == "ok" and high["position"] == len(content) and high["rows"] == 1
    assert high["sha256"] == hashlib.sha256(content).hexdigest()
    # the file written to since: the hash is still of what the run wrote; cut short: no hash
    with (work / "out/high.csv").open("ab") as f:
        f.write(b"9,99\r\n")
    grown = {a["sink"]: a for a in _json(elspeth("show", second, "--json", cwd=work, db=db))["artifacts"]}["high"]
    assert grown["file"] == "grown" and grown["sha256"] == high["sha256"]
    # as long, but other bytes (another run's file of the same size, an edit): the log's digest tells
    (work / "out/high.csv").write_bytes(content[:-2] + b"9\n")
    changed = {a["sink"]: a for a in _json(elspeth("show", second, "--json", cwd=work, db=db))["artifacts"]}["high"]
    assert changed["file"] == "changed" and changed["sha256"] != high["sha256"], changed
    (work / "out/high.csv").write_bytes(content[:3])
    text = elspeth("show", second, cwd=work, db=db).stdout
    assert "fewer than the" in text and "cut or replaced" in text
    assert "no run run-nope" in one_line_error(elspeth("show", "run-nope", cwd=work, db=db), 1)


@pytest.fixture
def work_pipeline(tmp_path: Path) -> Path:
    write_csv(tmp_path / "in.csv", ["id", "v"], [[1, 3], [2, 9], [3, "x"]])
    (tmp_path / "out").mkdir()
    (tmp_path / "settings.yaml").write_text(PIPELINE)
    return tmp_path


def test_replay_json_counts_what_a_gate_diverted(db: Database, fork: Path) -> None:
    run_id = _run(db, fork)
    out = _json(elspeth("replay", run_id, "--check", "--json", cwd=fork, db=db))
    assert set(out) == {"run_id", "events", "head", "as_of", "status", "last_seq", "source_records",
                        "source_exhausted", "outcomes", "per_node", "in_flight", "checkpoints", "erased",
                        "erased_unsigned", "check"}  # fmt: skip
    assert out["checkpoints"]["store"] >= 1 and out["checkpoints"]["signatures_checked"] is True
    assert out["per_node"]["check"] == {"diverted": 1, "route true": 2}
    assert out["per_node"]["split"] == {"forked": 3} and out["per_node"]["join"] == {"failed": 1, "merged": 4}
    assert out["check"] == {"upto_seq": out["last_seq"], "agree": True, "differences": [], "hazards": []}
    text = elspeth("replay", run_id, cwd=fork, db=db).stdout
    assert "check: 3 (diverted 1, route true 2)" in text


def test_explain_says_how_a_coalesce_resolved_as_the_coalesces_table_does(db: Database, fork: Path) -> None:
    """explain --json and the `coalesces` projection are two readings of one event: a coalesce that
    failed because a branch was lost said trigger None in one and "arrivals" in the other (a
    docs review)."""
    run_id = _run(db, fork)
    with db.connect() as conn:
        table = {
            cid: (status, trigger)
            for cid, status, trigger in conn.execute(
                "SELECT coalesce_id, status, trigger FROM coalesces WHERE run_id = %s", (run_id,)
            )
        }
    assert sorted(status for status, _ in table.values()) == ["failed", "merged", "merged"]
    shown = {}
    for row in range(1, 5):  # every row of the input
        out = _json(elspeth("explain", run_id, "--row", str(row), "--json", cwd=fork, db=db))
        shown.update({c["id"]: (c["outcome"], c["trigger"]) for r in out["rows"] for c in r["coalesces"]})
    assert shown == table


def test_the_run_summary_counts_rows_and_tokens_apart(db: Database, fork: Path) -> None:
    proc = elspeth("run", "-s", "settings.yaml", cwd=fork, db=db)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "  rows in: 4 (" in proc.stdout
    assert "  rows written: bad 2, out 2" in lines
    assert "  rows quarantined: 1, failed: 1, diverted: 0" in lines  # row 2: its branch diverted, so failed
    # why it failed, and the row to explain (a run can complete with every row failed)
    assert "  first failed: row 2 at join: branch_lost" in lines, proc.stdout
    assert "--row 2`" in proc.stdout
    assert "  tokens: coalesced 4, completed 2, diverted 1, failed 1, forked 3, quarantined 1" in lines
    digest = hashlib.sha256((fork / "out/out.jsonl").read_bytes()).hexdigest()
    assert f"sha256 {digest}" in proc.stdout


def test_a_row_whose_branch_was_diverted_and_whose_coalesce_failed_counts_once_as_failed(
    db: Database, fork: Path
) -> None:
    """Row 2's branch b is diverted by `check`'s row error, so its coalesce fails: it was counted
    both diverted and failed, and the rows' outcomes added up to more rows than were read (a
    hostile review). Failed wins; nor is it among the rows diverted to discard."""
    (fork / "settings.yaml").write_text(FORK.replace("on_error: bad", "on_error: discard"))
    run_id = _run(db, fork)
    rows = _json(elspeth("show", run_id, "--json", cwd=fork, db=db))["rows"]
    assert (rows["in"], rows["quarantined"], rows["failed"], rows["diverted"], rows["discarded"]) == (4, 1, 1, 0, 0)
    text = elspeth("show", run_id, cwd=fork, db=db).stdout
    assert "; quarantined 1, failed 1, diverted 0\n" in text, text


def _run_to_two_sinks(db: Database, work: Path, source: str, nodes: str) -> subprocess.CompletedProcess[str]:
    """`elspeth run` of `source` (a flow mapping) and `nodes` (YAML), with the sinks `output` and
    `side` (JSON lines in out/), in `work`; it must succeed."""
    (work / "out").mkdir()
    sinks = (
        "sinks:\n"
        "  output: {plugin: json, options: {path: out/o.jsonl, format: jsonl}}\n"
        "  side: {plugin: json, options: {path: out/side.jsonl, format: jsonl}}\n"
    )
    (work / "s.yaml").write_text(f"source: {source}\n{nodes}{sinks}")
    proc = elspeth("run", "-s", "s.yaml", cwd=work, db=db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_the_first_failed_row_is_not_a_row_that_merged_with_a_branch_late(db: Database, tmp_path: Path) -> None:
    """Under quorum, row 1 merged on two branches and went on, its third arriving late
    (late_arrival: not a failed row, as the counts say); row 4 failed its quorum. The summary
    named row 1 as the first failed (a review)."""
    write_csv(tmp_path / "in.csv", ["id", "amount"], [[1, 5], [2, 50], [3, 500], [4, 5000]])
    proc = _run_to_two_sinks(
        db,
        tmp_path,
        "{plugin: csv, on_success: raw, options: {path: in.csv, schema: {mode: fixed, "
        "fields: ['id: int', 'amount: int']}, on_validation_failure: discard}}",
        "gates:\n"
        "- {name: outer, input: raw, condition: 'True', routes: {'true': fork}, fork_to: [a, b, c]}\n"
        "- {name: gc, input: c, condition: \"row['amount'] > 100\", routes: {'true': side, 'false': c_ok}}\n"
        "- {name: gb, input: b, condition: \"row['amount'] > 1000\", routes: {'true': side, 'false': b_ok}}\n"
        "transforms:\n"
        "- {name: ta, plugin: field_mapper, input: a, on_success: a_ok, on_error: discard, "
        "options: {mapping: {amount: a_amount}}}\n"
        "coalesce:\n"
        "- {name: jout, branches: {a: a_ok, b: b_ok, c: c_ok}, policy: quorum, quorum_count: 2, merge: union, "
        "on_success: output}\n",
    )
    assert "failed: 1" in proc.stdout, proc.stdout
    with db.connect() as conn:
        late = conn.execute(
            "SELECT t.row_index FROM token_outcomes o JOIN tokens t USING (run_id, token_id)"
            " WHERE o.run_id = %s AND o.reason = 'late_arrival'",
            (proc.stdout.split()[1],),
        ).fetchall()
    assert sorted(late) == [(0,), (1,)]  # rows 1 and 2 merged, their third branch late: the case
    assert "  first failed: row 4 at jout: quorum_not_met" in proc.stdout.splitlines(), proc.stdout
    # `show` says what the coalesce did, and which of its failed tokens were late (it said "jout:
    # 0 steps, failed 2" beside one failed row: an investigator's review).
    shown = elspeth("show", proc.stdout.split()[1], cwd=tmp_path, db=db).stdout
    (line,) = [x for x in shown.splitlines() if x.strip().startswith("jout ")]
    assert line.endswith("failed 3 (2 of them late arrivals); coalesces failed 1, merged 3"), line


# in.jsonl's records, each forked to branches b and a (the gates and the coalesce follow).
_JSON_IN = (
    "{plugin: json, on_success: raw, options: {path: in.jsonl, format: jsonl, schema: {mode: fixed, "
    "fields: ['id: int', 'amount: any']}, on_validation_failure: discard}}"
)
_FORK_TO_B_AND_A = "gates:\n- {name: outer, input: raw, condition: 'True', routes: {'true': fork}, fork_to: [b, a]}\n"


def test_the_first_failed_row_is_the_lowest_failed_row_coalesce_or_token(db: Database, tmp_path: Path) -> None:
    """Row 1's coalesce failed (its branch b routed aside first, branch a then late to a failed
    coalesce); row 3 failed at a gate. Ordered by seq with token failures first, the summary
    named row 3 (a review of the fix above)."""
    (tmp_path / "in.jsonl").write_text('{"id":1,"amount":5}\n{"id":2,"amount":50}\n{"id":3,"amount":"x"}\n')
    proc = _run_to_two_sinks(
        db,
        tmp_path,
        _JSON_IN,
        _FORK_TO_B_AND_A
        + "- {name: gb, input: b, condition: \"row['id'] == 1\", routes: {'true': side, 'false': b_ok}}\n"
        "- {name: ga, input: a, condition: \"row['amount'] > 10\", routes: {'true': a_ok, 'false': a_ok}}\n"
        "coalesce:\n"
        "- {name: j, branches: {a: a_ok, b: b_ok}, policy: require_all, merge: union, on_success: output}\n",
    )
    assert "failed: 2" in proc.stdout, proc.stdout
    assert "  first failed: row 1 at j: branch_lost" in proc.stdout.splitlines(), proc.stdout


def test_the_first_failed_row_is_named_by_its_tokens_failure_not_its_coalesces(db: Database, tmp_path: Path) -> None:
    """Row 2's branch a fails at a gate, and its coalesce then fails for want of it: both are the
    row's failures, and the summary names the cause, the token's, before the coalesce's."""
    (tmp_path / "in.jsonl").write_text('{"id":1,"amount":5}\n{"id":2,"amount":"x"}\n')
    proc = _run_to_two_sinks(
        db,
        tmp_path,
        _JSON_IN,
        _FORK_TO_B_AND_A
        + "- {name: ga, input: a, condition: \"row['amount'] > 10\", routes: {'true': a_ok, 'false': a_ok}}\n"
        "coalesce:\n"
        "- {name: j, branches: {a: a_ok, b: b}, policy: require_all, merge: union, on_success: output}\n",
    )
    assert "failed: 1" in proc.stdout, proc.stdout
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("  first failed: ")]
    assert line.startswith("  first failed: row 2 at ga: "), proc.stdout


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            lambda w: (w / "in.csv").unlink(),
            "source.options.path: the input in.csv does not exist (relative to the folder elspeth runs in, ",
        ),
        (lambda w: shutil.rmtree(w / "out"), "sinks.bad.options.path: the folder out of out/bad.jsonl does not exist"),
    ],
    ids=["missing", "no-output-folder"],
)
def test_validate_and_run_check_inputs_and_output_folders_before_any_store(
    work_pipeline: Path, change: Any, says: str
) -> None:
    work = work_pipeline
    change(work)
    for command in (("validate", "-s", "settings.yaml"), ("run", "-s", "settings.yaml")):
        err = one_line_error(elspeth(*command, cwd=work), 1)
        assert says in err, err
        # no store was created (the embedded default's data folder; the home itself may hold the
        # fingerprint key, which loading settings makes)
        assert not (work / ".elspeth" / "pgdata").exists()


def test_db_stop_stops_a_server_left_by_a_killed_process_and_not_one_in_use(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    pid = tmp_path / ".elspeth" / "pgdata" / "postmaster.pid"
    assert "not running" in elspeth("db", "stop", cwd=tmp_path).stdout
    serve = subprocess.Popen(
        [sys.executable, "-m", "engine.cli.main", "db", "serve"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert serve.stdout is not None
        assert re.match("audit store", serve.stdout.readline())  # up and serving
        err = one_line_error(elspeth("db", "stop", cwd=tmp_path), 1)
        assert "another elspeth process (a run, or `db serve`) is using it" in err and pid.exists()
    finally:
        serve.send_signal(signal.SIGKILL)  # killed: it cannot stop the server on its way out
        serve.communicate(timeout=60)
    assert pid.exists()  # left running
    proc = elspeth("db", "stop", cwd=tmp_path)
    assert proc.returncode == 0 and "stopped" in proc.stdout, proc.stderr
    assert not pid.exists()


def test_docs_describe_every_read_command() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    for heading in ("## `elspeth runs`", "## `elspeth show", "## `elspeth explain", "## `elspeth replay",
                    "## `elspeth db stop`"):  # fmt: skip
        assert heading in text


def test_the_row_counts_never_join_row_by_row(db: Database, fork: Path) -> None:
    """A run just written is usually not analysed yet; the planner's guess of a few rows per run
    then favours a nested loop, which on a large run was quadratic (the summary of a
    200,000-row run ran for minutes). Here the run is small, so the planner picks one anyway (for one of the queries):
    `without_nested_loops` must take it off the table."""
    run_id = _run(db, fork)

    def plan(query: str, hinted: bool) -> str:
        with db.connect() as conn:
            if hinted:
                without_nested_loops(conn)
            return "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, {"run": run_id}))

    queries = (ROWS_BY_OUTCOME, ROWS_UNFINISHED)
    assert any("Nested Loop" in plan(q, hinted=False) for q in queries)  # the situation the hint is for
    for query in queries:
        assert "Nested Loop" not in plan(query, hinted=True)
