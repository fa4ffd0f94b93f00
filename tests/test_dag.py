"""The DAG: connections wire nodes; every wiring mistake is reported, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.dag import DagError, Shape, Target, build_dag, row_shapes
from engine.settings import Settings, SettingsError, load_settings

CONFORMANCE = Path(__file__).resolve().parent / "corpus" / "examples"  # the prior system's (see its README)

SOURCE = "source: {plugin: csv, on_success: raw, options: {path: in.csv}}\n"
SINKS = "sinks:\n  out: {plugin: csv}\n  bad: {plugin: csv}\n"


def _settings(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "settings.yaml"
    path.write_text(SOURCE + text + SINKS, encoding="utf-8")
    return load_settings(path, {}).settings


def _dag_errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(DagError) as err:
        build_dag(_settings(tmp_path, text))
    assert str(err.value) == "\n".join(err.value.errors)
    return err.value.errors


def _t(name: str, src: str, dst: str) -> str:
    return f"- {{name: {name}, plugin: passthrough, input: {src}, on_success: {dst}, on_error: bad}}\n"


def test_fork_coalesce_is_compiled_for_the_processor() -> None:
    loaded = load_settings(CONFORMANCE / "fork_coalesce" / "settings_per_branch.yaml", {})
    dag = build_dag(loaded.settings)
    assert dag.source_output == "raw"
    assert dag.target("raw") == Target("gate", "fork_gate")
    assert dag.target("path_a") == Target("transform", "truncate_branch_a")
    assert dag.target("truncated_a") == Target("coalesce", "merge_results", "path_a")
    assert dag.target("mapped_b") == Target("coalesce", "merge_results", "path_b")
    assert dag.target("output") == Target("sink", "output")
    assert dag.fork_branches == {"fork_gate": ["path_a", "path_b"]}
    assert dag.coalesce_branches == {"merge_results": ["path_a", "path_b"]}
    assert dag.coalesce_output("merge_results") == "merge_results"
    assert dag.target("merge_results") == Target("gate", "route_output")
    order = dag.node_order
    assert order.index("fork_gate") < order.index("truncate_branch_a") < order.index("merge_results")
    assert order.index("merge_results") < order.index("route_output")
    assert dag.nodes["map_branch_b"].kind == "transform" and dag.nodes["map_branch_b"].plugin == "field_mapper"
    assert dag.nodes["merge_results"].plugin == "coalesce"


def test_two_routes_of_one_gate_may_reach_the_same_place(tmp_path: Path) -> None:
    text = "gates:\n- {name: g, input: raw, condition: 'True', routes: {'true': mid, 'false': mid}}\n"
    dag = build_dag(_settings(tmp_path, text + "transforms:\n" + _t("t", "mid", "out")))
    assert dag.node_order == ["g", "t"]


def test_node_order_is_topological_then_declared(tmp_path: Path) -> None:
    text = "transforms:\n" + _t("c", "m2", "out") + _t("b", "m1", "m2") + _t("a", "raw", "m1")
    assert build_dag(_settings(tmp_path, text)).node_order == ["a", "b", "c"]


def test_dangling_output(tmp_path: Path) -> None:
    assert _dag_errors(tmp_path, "transforms:\n" + _t("t1", "raw", "nowhere")) == [
        "transforms[0].on_success: connection 'nowhere' goes nowhere (no node reads it and no sink has that name); "
        "allowed: a sink (bad, out) or a connection a node reads"
    ]


def test_a_gate_route_that_points_nowhere(tmp_path: Path) -> None:
    text = "gates:\n- {name: g, input: raw, condition: 'True', routes: {'true': out, 'false': lost}}\n"
    (line,) = _dag_errors(tmp_path, text)
    assert line.startswith("gates[0].routes.false: connection 'lost' goes nowhere")


def test_an_input_nothing_produces(tmp_path: Path) -> None:
    errors = _dag_errors(tmp_path, "transforms:\n" + _t("t1", "raw", "out") + _t("t2", "missing", "out"))
    assert (
        "transforms[1].input: connection 'missing' is produced by nothing; allowed: the source's on_success or a "
        "connection a node writes"
    ) in errors
    assert "transform 't2': unreachable from the source; allowed: nodes the source's rows reach" in errors


def test_two_producers_on_one_connection(tmp_path: Path) -> None:
    text = (
        "gates:\n- {name: g, input: raw, condition: 'True', routes: {'true': a, 'false': b}}\n"
        "transforms:\n" + _t("ta", "a", "mid") + _t("tb", "b", "mid") + _t("tm", "mid", "out")
    )
    assert _dag_errors(tmp_path, text) == [
        "connection 'mid' has 2 producers (transforms[0].on_success, transforms[1].on_success); allowed: exactly "
        "one (fan out through a gate)"
    ]


def test_two_consumers_of_one_connection(tmp_path: Path) -> None:
    errors = _dag_errors(tmp_path, "transforms:\n" + _t("t1", "raw", "out") + _t("t2", "raw", "out"))
    assert errors[0] == (
        "transforms[1].input: connection 'raw' is already read by transform 't1'; allowed: one reader per "
        "connection (fan out through a gate)"
    )


def test_reading_a_sink(tmp_path: Path) -> None:
    errors = _dag_errors(tmp_path, "transforms:\n" + _t("t1", "raw", "out") + _t("t2", "out", "bad"))
    assert "transforms[1].input: 'out' is a sink; allowed: a connection (nodes cannot read sinks)" in errors


def test_cycles(tmp_path: Path) -> None:
    text = (
        "gates:\n- {name: g, input: raw, condition: 'True', routes: {'true': loop, 'false': out}}\n"
        "- {name: h, input: back, condition: 'True', routes: {'true': again, 'false': out}}\n"
        "transforms:\n" + _t("t1", "loop", "mid") + _t("t2", "mid", "back") + _t("t3", "again", "mid")
    )
    errors = _dag_errors(tmp_path, text)
    assert any(e.startswith("connection 'mid' has 2 producers") for e in errors)
    (cycle,) = [e for e in errors if "cycle" in e]
    assert cycle == "the pipeline has a cycle: t2 -> h -> t3 -> t2; allowed: no cycles"


def test_a_cycle_not_reachable_from_the_source(tmp_path: Path) -> None:
    text = "transforms:\n" + _t("t0", "raw", "out") + _t("t1", "x", "y") + _t("t2", "y", "x")
    errors = _dag_errors(tmp_path, text)
    assert "the pipeline has a cycle: t1 -> t2 -> t1; allowed: no cycles" in errors
    assert "transform 't1': unreachable from the source; allowed: nodes the source's rows reach" in errors


def test_a_coalesce_whose_branches_no_fork_produces(tmp_path: Path) -> None:
    text = (
        "gates:\n- {name: g, input: raw, condition: 'True', routes: {'true': b, 'false': c}}\n"
        "coalesce:\n- {name: j, branches: [b, c], on_success: out}\n"
    )
    assert _dag_errors(tmp_path, text) == [
        "coalesce[0].branches[b]: 'b' is not a branch any gate forks to (fork_to); allowed: none: no gate forks",
        "coalesce[0].branches[c]: 'c' is not a branch any gate forks to (fork_to); allowed: none: no gate forks",
    ]


def test_a_coalesce_branch_must_come_from_its_fork_branch(tmp_path: Path) -> None:
    text = (
        "gates:\n- {name: g, input: raw, condition: 'True', routes: {'true': fork, 'false': out}, fork_to: [a, b]}\n"
        "transforms:\n"
        + _t("ta", "a", "a_done")
        + _t("tb", "b", "b_done")
        + ("coalesce:\n- {name: j, branches: {a: b_done, b: a_done}, on_success: out}\n")
    )
    assert _dag_errors(tmp_path, text) == [
        "coalesce[0].branches.a: connection 'b_done' comes from fork branch 'b'; allowed: a connection downstream "
        "of gate 'g' fork branch 'a'",
        "coalesce[0].branches.b: connection 'a_done' comes from fork branch 'a'; allowed: a connection downstream "
        "of gate 'g' fork branch 'b'",
    ]


@pytest.mark.parametrize("mode", ["transform", "passthrough"])
def test_an_aggregation_that_makes_new_rows_cannot_feed_a_coalesce_branch(tmp_path: Path, mode: str) -> None:
    """Its rows belong to no branch: every one would fail at the coalesce (`not_a_branch`)."""
    text = (
        "gates:\n- {name: g, input: raw, condition: 'True', routes: {'true': fork, 'false': out}, fork_to: [a, b]}\n"
        "transforms:\n"
        + _t("ta", "a", "a_done")
        + _t("tb", "b_agg", "b_done")
        + "aggregations:\n- {name: agg, plugin: batch_stats, input: b, on_success: b_agg, on_error: bad, "
        + f"output_mode: {mode}, trigger: {{count: 2}}, options: {{value_field: v}}}}\n"
        + "coalesce:\n- {name: j, branches: {a: a_done, b: b_done}, on_success: out}\n"
    )
    if mode == "passthrough":  # the same tokens go on, on their branch
        build_dag(_settings(tmp_path, text))
        return
    assert _dag_errors(tmp_path, text) == [
        "coalesce[0].branches.b: aggregation 'agg' on branch 'b' makes new rows (output_mode: transform), which "
        "belong to no branch: none would reach this coalesce; allowed: output_mode: passthrough there, or the "
        "aggregation after the coalesce"
    ]


def test_a_coalesce_joins_the_branches_of_one_gate(tmp_path: Path) -> None:
    """A coalesce's instance is keyed by the forked token: with branch a forked from the row and
    branch b from its branch x, each row's a and b opened instances of their own (require_all:
    both failed, "missing" a branch that had arrived; first: the row written twice)."""
    text = (
        "gates:\n- {name: g1, input: raw, condition: 'True', routes: {'true': fork}, fork_to: [a, x]}\n"
        "- {name: g2, input: x, condition: 'True', routes: {'true': fork}, fork_to: [b, c]}\n"
        "coalesce:\n- {name: j, branches: [a, b], policy: first, on_success: out}\n"
        "transforms:\n" + _t("tc", "c", "bad")
    )
    assert _dag_errors(tmp_path, text) == [
        "coalesce[0].branches: branches of 2 gates' forks (g1, g2), which never meet: each row's branches would be "
        "merged apart, or never; allowed: the fork_to branches of one gate"
    ]


def test_the_nodes_on_a_joined_branch_are_known(tmp_path: Path) -> None:
    text = (
        "gates:\n- {name: g, input: raw, condition: 'True', routes: {'true': fork, 'false': out}, fork_to: [a, b]}\n"
        "transforms:\n" + _t("ta", "a", "a_mid") + _t("ta2", "a_mid", "a_done") + _t("after", "j", "out")
        + "coalesce:\n- {name: j, branches: {a: a_done, b: b}}\n"
    )  # fmt: skip
    assert build_dag(_settings(tmp_path, text)).on_joined_branch == {"ta": ("a", "j"), "ta2": ("a", "j")}


def test_a_coalesce_without_on_success_writes_to_its_own_name(tmp_path: Path) -> None:
    text = (
        "gates:\n- {name: g, input: raw, condition: 'True', routes: {'true': fork, 'false': out}, fork_to: [a, b]}\n"
        "coalesce:\n- {name: j, branches: [a, b]}\n"
        "transforms:\n" + _t("after", "j", "out")
    )
    dag = build_dag(_settings(tmp_path, text))
    assert dag.coalesce_output("j") == "j"
    assert dag.target("j") == Target("transform", "after")
    assert dag.target("a") == Target("coalesce", "j", "a")


def test_continue_is_not_a_route(tmp_path: Path) -> None:
    text = "gates:\n- {name: g, input: raw, condition: 'True', routes: {'true': continue, 'false': out}}\n"
    assert _dag_errors(tmp_path, text) == [
        "gates[0].routes.true: 'continue' is not supported; allowed: a sink, a connection or fork"
    ]


def test_unknown_error_sinks_are_settings_errors(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(SOURCE + "transforms:\n" + _t("t", "raw", "out").replace("bad", "nope") + SINKS)
    with pytest.raises(SettingsError, match=r"transforms\[0\]\.on_error: 'nope' is not a sink; allowed: discard, "):
        load_settings(path, {})


def test_every_problem_is_reported_together(tmp_path: Path) -> None:
    text = "transforms:\n" + _t("t1", "raw", "nowhere") + _t("t2", "missing", "out") + _t("t3", "raw", "out")
    errors = _dag_errors(tmp_path, text)
    assert len(errors) >= 4


# -- a gate naming a field its rows cannot have -------------------------------------------------


def _gate_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schema: str, steps: str) -> list[str]:
    from engine.orchestrator import pipeline_problems

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("id,amount,note\n1,5,x\n")
    source = f"source: {{plugin: csv, on_success: raw, options: {{path: in.csv, schema: {schema}}}}}\n"
    sinks = (
        "sinks:\n  out: {plugin: json, options: {path: out.json}}\n  bad: {plugin: json, options: {path: bad.json}}\n"
    )
    path = tmp_path / "settings.yaml"
    path.write_text(source + steps + sinks, encoding="utf-8")
    return [p.removeprefix(f"{path}: ") for p in pipeline_problems(load_settings(path, {}))]


FIXED = "{mode: fixed, fields: ['id: int', 'amount: int', 'note: str?']}"


def _gate(name: str, src: str, condition: str, routes: str = "{'true': out, 'false': bad}") -> str:
    return f'- {{name: {name}, input: {src}, condition: "{condition}", routes: {routes}}}\n'


def test_a_gate_after_a_fixed_source_may_name_only_declared_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A misspelt field: row['amont'] fails every row; row.get('amont', 0) routes every row one way.
    # (Listed last to first: each is found all the same.)
    steps = "gates:\n" + _gate("kind", "next", "row.get('kindd', 0) == 1 and row['note'] == 'x'")
    steps += _gate("hop", "hop", "True", "{'true': next}")
    steps += _gate("size", "raw", "row['amont'] > 1", "{'true': out, 'false': hop}")
    assert _gate_problems(tmp_path, monkeypatch, FIXED, steps) == [
        "gates[0].condition (gate 'kind'): names 'kindd', which the source's schema (mode fixed) does not declare, "
        "so no row reaching it has it; allowed: the declared fields (id, amount, note)",
        "gates[2].condition (gate 'size'): names 'amont', which the source's schema (mode fixed) does not declare, "
        "so no row reaching it has it; allowed: the declared fields (id, amount, note)",
    ]
    # The same gates after a fork's branch: a fork copies the row as it is.
    fork = "gates:\n" + _gate("f", "raw", "True", "{'true': fork}").replace("}\n", ", fork_to: [a, b]}\n")
    fork += _gate("g", "a", "row['amont'] > 1") + _gate("h", "b", "row['amount'] > 1")
    (problem,) = _gate_problems(tmp_path, monkeypatch, FIXED, fork)
    assert problem.startswith("gates[1].condition (gate 'g'): names 'amont'")


def _step(section: str, plugin: str, options: str, src: str = "raw") -> str:
    on_error = ", on_error: bad" + (", trigger: {count: 2}" if section == "aggregations" else "")
    return f"{section}:\n- {{name: n, plugin: {plugin}, input: {src}, on_success: out{on_error}, options: {options}}}\n"


@pytest.mark.parametrize(
    ("step", "says"),
    [
        # A misspelt field: truncate and field_mapper (not strict) would leave every row as it was.
        (_step("transforms", "truncate", "{fields: {nte: 3}}"), "transforms[0].options.fields.nte (transform 'n')"),
        (_step("transforms", "field_mapper", "{mapping: {amont: total}}"), "transforms[0].options.mapping.amont"),
        (_step("transforms", "field_mapper", "{mapping: {amont.x: total}}"), "transforms[0].options.mapping.amont.x"),
        (_step("transforms", "passthrough", "{required_input_fields: [id, nte]}"), "required_input_fields[1]"),
        (_step("transforms", "keyword_filter", "{fields: [nte], blocked_patterns: [x]}"), "options.fields[0]"),
        (_step("transforms", "json_explode", "{array_field: itms}"), "transforms[0].options.array_field"),
        (_step("aggregations", "batch_stats", "{value_field: amont}"), "aggregations[0].options.value_field"),
        (_step("aggregations", "batch_stats", "{value_field: amount, group_by: nte}"), "options.group_by"),
    ],
)
def test_a_step_after_a_fixed_source_may_name_only_declared_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, says: str
) -> None:
    (problem,) = _gate_problems(tmp_path, monkeypatch, FIXED, step)
    assert says in problem and "does not declare, so no row reaching it has it" in problem, problem
    # After a gate too, and after a transform that keeps the rows' fields; not after an
    # aggregation, which makes rows of its own.
    gate = "gates:\n" + _gate("g", "raw", "True", "{'true': mid, 'false': out}")
    assert len(_gate_problems(tmp_path, monkeypatch, FIXED, gate + step.replace("input: raw", "input: mid"))) == 1

    def after(section: str, plugin: str, options: str) -> list[str]:
        first = (
            _step(section, plugin, options).replace("name: n", "name: p").replace("on_success: out", "on_success: mid")
        )
        second = step.replace("input: raw", "input: mid")
        if first.split(":")[0] == step.split(":")[0]:  # one list of both
            second = second.replace(f"{step.split(':')[0]}:\n", "")
        elif section == "aggregations":
            first, second = second, first
        return _gate_problems(tmp_path, monkeypatch, FIXED, first + second)

    (problem,) = after("transforms", "passthrough", "{}")
    assert "does not declare, so no row reaching it has it" in problem, problem
    (problem,) = after("transforms", "field_mapper", "{mapping: {note: remark}}")
    assert (
        "which no row reaching it can hold: behind the source's schema (mode fixed) and transform 'p', its rows hold "
        "only (id, amount, remark); allowed: those fields" in problem
    ), problem
    assert after("aggregations", "batch_stats", "{value_field: amount}") == []


@pytest.mark.parametrize(
    ("schema", "steps"),
    [
        # declared fields, optional ones too; a key computed from the row is not known before it runs
        (FIXED, "gates:\n" + _gate("g", "raw", "row['amount'] > 1 and row['note'] is None")),
        (FIXED, "gates:\n" + _gate("g", "raw", "row[row['note']] == 1")),
        (FIXED, _step("transforms", "field_mapper", "{mapping: {note.x: total, amount: a}}")),
        # (a row without batch_replicate's copies_field has default_copies, by design)
        (FIXED, _step("aggregations", "batch_replicate", "{copies_field: copies}")),
        ("{mode: flexible, fields: ['id: int']}", _step("transforms", "truncate", "{fields: {nte: 3}}")),
        # at least these fields, or whatever arrives: any field may be there
        ("{mode: flexible, fields: ['id: int']}", "gates:\n" + _gate("g", "raw", "row['other'] == 1")),
        ("{mode: observed}", "gates:\n" + _gate("g", "raw", "row['other'] == 1")),
        # a transform on the way makes the field
        (
            FIXED,
            "transforms:\n- {name: t, plugin: field_mapper, input: raw, on_success: mapped, on_error: bad, "
            "options: {mapping: {amount: total}}}\ngates:\n" + _gate("g", "mapped", "row['total'] > 1"),
        ),
        (
            FIXED,
            "transforms:\n- {name: t, plugin: json_explode, input: raw, on_success: items, on_error: bad, "
            "options: {array_field: note}}\ngates:\n" + _gate("g", "items", "row['item'] == row['item_index']"),
        ),
        # a nested value a field_mapper copies may be there (or not)
        (
            FIXED,
            "transforms:\n- {name: t, plugin: field_mapper, input: raw, on_success: m, on_error: bad, "
            "options: {mapping: {note.x: x}, select_only: true}}\ngates:\n" + _gate("g", "m", "row.get('x') == 1"),
        ),
    ],
)
def test_a_gate_whose_fields_may_be_there_is_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schema: str, steps: str
) -> None:
    assert _gate_problems(tmp_path, monkeypatch, schema, steps) == []


def _chain(*transforms: str) -> str:
    """Transforms t0, t1, … one after another from `raw`, the last writing to `end`."""
    lines = []
    for i, (plugin, options) in enumerate(t.split(" ", 1) for t in transforms):
        to = "end" if i == len(transforms) - 1 else f"c{i}"
        src = "raw" if i == 0 else f"c{i - 1}"
        lines.append(
            f"- {{name: t{i}, plugin: {plugin}, input: {src}, on_success: {to}, on_error: bad, options: {options}}}"
        )
    return "transforms:\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("transforms", "condition", "holds"),
    [
        # a field_mapper's old name is gone, however many steps later
        (
            ["field_mapper {mapping: {amount: total}}", "truncate {fields: {note: 3}}"],
            "row['amount'] > 1",
            "(id, note, total)",
        ),
        (["field_mapper {mapping: {amount: total, id: key}, select_only: true}"], "row['note'] == 'x'", "(total, key)"),
        # each pair in turn: the second takes the first's new name
        (["field_mapper {mapping: {amount: total, total: sum}}"], "row.get('total', 0) > 1", "(id, note, sum)"),
        (["json_explode {array_field: note, include_index: false}"], "row['note'] == 1", "(id, amount, item)"),
        (["json_explode {array_field: note, output_field: one}"], "row['item'] == 1", "(id, amount, one, item_index)"),
    ],
)
def test_a_gate_after_transforms_that_change_the_fields_may_name_only_what_they_leave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transforms: list[str], condition: str, holds: str
) -> None:
    # A careless user renames a field, then routes on its old name: every row fails, or (with
    # row.get) every row goes one way, in a run that completes.
    steps = _chain(*transforms) + "gates:\n" + _gate("g", "end", condition)
    (problem,) = _gate_problems(tmp_path, monkeypatch, FIXED, steps)
    named = ", ".join(f"transform 't{i}'" for i in range(len(transforms)) if not transforms[i].startswith("truncate"))
    assert problem.startswith("gates[0].condition (gate 'g'): names '"), problem
    assert (
        f"which no row reaching it can hold: behind the source's schema (mode fixed) and {named}, its rows hold only {holds}"
        in problem
    ), problem


@pytest.mark.parametrize(
    ("transforms", "says"),
    [
        # a nested source inside a field an earlier pair renamed away: never copied (strict too)
        (
            ["field_mapper {mapping: {note: n, note.city: city}, strict: true}"],
            "transforms[0].options.mapping.note.city (transform 't0'): reads 'note.city' inside 'note', which the pair "
            "'note: n' before it renamed away (each pair reads the row as the pairs before it left it), so it never "
            "copies anything; allowed: 'n.city', or this pair listed first",
        ),
        (
            ["field_mapper {mapping: {note: n, n: m, n.city: city}}"],
            "options.mapping.n.city (transform 't0'): reads 'n.city' inside 'n', which the pair 'n: m' before it",
        ),
        # a swap: the first pair overwrites 'note', which the second then reads (a review: a column lost)
        (
            ["field_mapper {mapping: {amount: note, note: amount}}"],
            "transforms[0].options.mapping.amount (transform 't0'): renames 'amount' onto 'note', which every row holds, "
            "and the later pair 'note: amount' reads 'note' as this pair left it: the row's own 'note' is lost; "
            "allowed: a name between (a swap: {amount: tmp, note: amount, tmp: note})",
        ),
        (["field_mapper {mapping: {amount: note, note.x: y}}"], "options.mapping.amount (transform 't0'): renames"),
        # two pairs onto one name, the later from a field every row holds (an optional one as None)
        (
            ["field_mapper {mapping: {amount: total, note: total}}"],
            "transforms[0].options.mapping.amount (transform 't0'): writes 'total', which the later pair 'note: total' "
            "writes again from a field every row reaching it holds",
        ),
        (["field_mapper {mapping: {amount: x, id: x}, select_only: true}"], "options.mapping.amount (transform 't0')"),
        (
            ["field_mapper {mapping: {amount: a}}", "json_explode {array_field: note, output_field: id}"],
            "transforms[1].options.output_field (transform 't1'): 'id' is a field every row reaching it holds (behind "
            "the source's schema, mode fixed), which each element would overwrite, so every row would fail; allowed: "
            "a name the rows do not hold (id, note, a they do)",
        ),
    ],
)
def test_a_transform_whose_options_cannot_work_on_the_fields_its_rows_hold_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transforms: list[str], says: str
) -> None:
    (problem,) = _gate_problems(
        tmp_path, monkeypatch, FIXED, _chain(*transforms).replace("on_success: end", "on_success: out")
    )
    assert says in problem, problem


@pytest.mark.parametrize(
    "transform",
    [
        "field_mapper {mapping: {note.city: city, note: n}}",  # the nested value first, then the rename
        "field_mapper {mapping: {note: n, n.city: city}}",
        "field_mapper {mapping: {amount: total, total: sum, note: total}}",  # the first total moved on
        "field_mapper {mapping: {note.x: total, amount: other}}",
        "field_mapper {mapping: {amount: total, note.x: total}}",  # a nested value: whichever exists
        "field_mapper {mapping: {amount: note}}",  # onto a field the row holds, which nothing reads after
        "field_mapper {mapping: {amount: tmp, note: amount, tmp: note}}",  # a swap
        "field_mapper {mapping: {amount: note, note: amount}, select_only: true}",  # each pair reads the input
        "json_explode {array_field: note, output_field: note}",  # the array's own name
        "json_explode {array_field: note}",
    ],
)
def test_a_transform_whose_options_work_on_the_fields_its_rows_hold_is_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transform: str
) -> None:
    assert (
        _gate_problems(tmp_path, monkeypatch, FIXED, _chain(transform).replace("on_success: end", "on_success: out"))
        == []
    )


def _joined(merge: str, condition: str) -> str:
    """Fork to a and b, rename amount on branch a, join them (`merge`), and route on `condition`."""
    return (
        "gates:\n- {name: f, input: raw, condition: 'True', routes: {'true': fork}, fork_to: [a, b]}\n"
        + _gate("g", "joined", condition)
        + "transforms:\n- {name: t, plugin: field_mapper, input: a, on_success: a2, on_error: bad, "
        "options: {mapping: {amount: total}}}\n"
        f"coalesce:\n- {{name: j, branches: {{a: a2, b: b}}, merge: {merge}, on_success: joined"
        + (", select_branch: a}\n" if merge == "select" else "}\n")
    )


@pytest.mark.parametrize(
    ("merge", "condition", "holds"),
    [
        ("union", "row['amont'] > 1", "(id, note, total, amount)"),
        ("nested", "row['amount'] > 1", "(a, b)"),
        ("select", "row['amount'] > 1", "(id, note, total)"),
    ],
)
def test_a_step_after_a_coalesce_may_name_only_what_its_merge_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, merge: str, condition: str, holds: str
) -> None:
    (problem,) = _gate_problems(tmp_path, monkeypatch, FIXED, _joined(merge, condition))
    assert problem.startswith("gates[1].condition (gate 'g'): names '"), problem
    assert (
        f"which no row reaching it can hold: behind the source's schema (mode fixed) and transform 't', coalesce 'j', "
        f"its rows hold only {holds}" in problem
    ), problem


@pytest.mark.parametrize(
    ("merge", "condition"),
    [
        ("union", "row['total'] > row['amount']"),  # each branch's fields
        ("nested", "row['a']['total'] > 1"),
        ("select", "row['total'] > 1"),
    ],
)
def test_a_step_after_a_coalesce_naming_what_its_merge_makes_is_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, merge: str, condition: str
) -> None:
    assert _gate_problems(tmp_path, monkeypatch, FIXED, _joined(merge, condition)) == []


def test_row_shapes_stop_where_a_transform_does_not_say_what_it_makes(tmp_path: Path) -> None:
    s = _settings(
        tmp_path,
        "transforms:\n"
        + _t("known", "raw", "a")
        + _t("unknown", "b", "c")
        + "gates:\n"
        + _gate("g", "a", "True", "{'true': b}"),
    )
    made = {"known": lambda f: (*f, "new"), "unknown": lambda f: None}

    def transform(name: str, fields: tuple[str, ...], certain: frozenset[str]) -> object:
        out = made[name](fields)
        return None if out is None else (out, certain & frozenset(out))

    shapes = row_shapes(s, ["id"], transform)
    assert shapes["raw"] == Shape(("id",))
    assert shapes["a"] == shapes["b"] == Shape(("id", "new"), ("transform 'known'",), frozenset({"new"}))
    assert "c" not in shapes


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ("output_mode: passthrough", "aggregations[0].output_mode: passthrough continues each row of a batch"),
        ("expected_output_count: 2", "aggregations[0].expected_output_count: 2, but batch_stats makes one row of"),
        ("expected_output_count: 0", "aggregations[0].expected_output_count: 0, but"),
        ("expected_output_count: 1", None),
        ("output_mode: passthrough, expected_output_count: 1", "output_mode: passthrough continues"),
    ],
)
def test_an_aggregation_set_to_want_other_than_the_one_row_its_plugin_makes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str, says: str | None
) -> None:
    # Every batch would fail, in a run that completes (a careless user's review).
    step = _step("aggregations", "batch_stats", "{value_field: amount}").replace("trigger:", f"{extra}, trigger:")
    problems = _gate_problems(tmp_path, monkeypatch, FIXED, step)
    assert [says in p for p in problems] == ([True] if says else []), problems
    # A batch of one row each can pass through; batch_replicate makes any number.
    one = step.replace("count: 2", "count: 1")
    assert ("expected_output_count: 1" not in extra) or _gate_problems(tmp_path, monkeypatch, FIXED, one) == []
    other = step.replace("batch_stats", "batch_replicate").replace("{value_field: amount}", "{}")
    assert _gate_problems(tmp_path, monkeypatch, FIXED, other) == []
    # A condition or a timeout may flush each row by itself (a review found {condition: 'True'} refused).
    for trigger in ("{condition: 'True'}", "{count: 2, timeout_seconds: 1}"):
        flushing = step.replace("trigger: {count: 2}", f"trigger: {trigger}")
        problems = _gate_problems(tmp_path, monkeypatch, FIXED, flushing)
        assert not any("output_mode" in p for p in problems), problems
