"""Settings, gate expressions and the DAG: every real pipeline loads, every mistake is named."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.dag import DagError, build_dag
from engine.expressions import ExpressionError, ExpressionSyntaxError, compile_expression
from engine.settings import SettingsError, load_settings

CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "examples"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SETTINGS_FILES = sorted(CONFORMANCE.glob("*/settings*.yaml")) + sorted(EXAMPLES.glob("*/settings*.yaml"))

BASE = """
source:
  plugin: csv
  on_success: raw
  options: {path: in.csv}
transforms:
- name: t1
  plugin: passthrough
  input: raw
  on_success: out
  on_error: discard
sinks:
  out: {plugin: csv, options: {path: out.csv}}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(SettingsError) as err:
        load_settings(_write(tmp_path, text), env or {})
    message = str(err.value)
    assert str(tmp_path / "settings.yaml") in message  # every error names the file
    return message


@pytest.mark.parametrize("path", SETTINGS_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_pipeline_loads_and_builds_a_dag(path: Path) -> None:
    loaded = load_settings(path, {})
    dag = build_dag(loaded.settings)
    assert dag.node_order


def test_malformed_yaml_names_line_and_column(tmp_path: Path) -> None:
    message = _errors(tmp_path, "source:\n  plugin: csv\n  options: {path: [unclosed\n")
    assert "line 4" in message and "column" in message


def test_unknown_keys_are_named_with_their_path_and_the_allowed_keys(tmp_path: Path) -> None:
    message = _errors(tmp_path, BASE.replace("  on_error: discard", "  on_error: discard\n  retries: 3"))
    assert "transforms[0]" in message and "retries" in message and "allowed:" in message
    assert "on_success" in message  # the allowed keys are listed


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = _errors(tmp_path, BASE + "pipelines: []\n")
    assert "pipelines: unknown key; allowed: source, sinks" in message


def test_wrong_types_and_missing_keys_are_all_reported_together(tmp_path: Path) -> None:
    text = BASE.replace("  on_error: discard\n", "") + "gates:\n- name: g\n  input: x\n  condition: 1\n  routes: 5\n"
    message = _errors(tmp_path, text)
    lines = message.splitlines()
    assert len(lines) >= 2
    assert any("transforms[0]" in line and "on_error" in line for line in lines)
    assert any("gates[0]" in line for line in lines)


def test_environment_variables_expand_with_defaults(tmp_path: Path) -> None:
    text = BASE.replace("path: in.csv", "path: '${IN_DIR}/in.csv'").replace("out.csv", "'${OUT:-result}.csv'")
    loaded = load_settings(_write(tmp_path, text), {"IN_DIR": "/data"})
    assert loaded.settings.source.options["path"] == "/data/in.csv"
    assert loaded.settings.sinks["out"].options["path"] == "result.csv"


def test_a_missing_environment_variable_is_named(tmp_path: Path) -> None:
    message = _errors(tmp_path, BASE.replace("path: in.csv", "path: '${IN_DIR}/in.csv'"))
    assert "source.options.path" in message and "IN_DIR" in message


@pytest.mark.parametrize(
    ("condition", "says"),
    [
        ("__import__('os').system('true')", "__import__"),
        ("row.keys()", "not allowed"),
        ("row['a'].upper() == 'X'", "not allowed"),
        ("open('/etc/passwd')", "'open'"),
        ("(lambda: 1)()", "not allowed"),
        ("[x for x in row]", "comprehensions"),
        ("row['a'][1:2]", "slices"),
        ("(y := 1)", ":="),
        ('f"{row}"', "f-strings"),
        ("row['a'] is 1", "None"),
    ],
)
def test_unsafe_gate_expressions_are_rejected_at_load_naming_the_gate(
    tmp_path: Path, condition: str, says: str
) -> None:
    text = BASE.replace("on_success: out\n", "on_success: gated\n") + (
        f"gates:\n- name: risky\n  input: gated\n  condition: {condition!r}\n  routes: {{'true': out, 'false': out}}\n"
    )
    message = _errors(tmp_path, text)
    assert "gates[0].condition (gate 'risky')" in message and says in message


def test_secrets_are_recorded_only_as_fingerprints(tmp_path: Path) -> None:
    text = BASE.replace(
        "out: {plugin: csv, options: {path: out.csv}}",
        "out: {plugin: database, options: {url: 'postgresql://app:hunter2@db/x', table: t, api_key: abc}}",
    )
    loaded = load_settings(_write(tmp_path, text), {})
    recorded = str(loaded.redacted)
    assert "hunter2" not in recorded and "'abc'" not in recorded
    assert "hmac-sha256:" in recorded


def test_semantic_checks(tmp_path: Path) -> None:
    text = BASE + (
        "coalesce:\n- name: j\n  branches: [a]\n  policy: quorum\n"
        "aggregations:\n- name: agg\n  plugin: batch_stats\n  input: q\n  on_success: out\n  on_error: nowhere\n"
        "  trigger: {}\n"
    )
    message = _errors(tmp_path, text)
    assert "coalesce[0].branches: at least 2 branches" in message
    assert "coalesce[0].quorum_count: required for policy quorum" in message
    assert "aggregations[0].on_error: 'nowhere' is not a sink" in message
    assert "aggregations[0].trigger: at least one trigger" in message


# -- expressions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "row", "value"),
    [
        ("row['a'] >= 5", {"a": 5}, True),
        ("row.get('missing', 3) + 1", {}, 4),
        ("row.get('x') is None", {}, True),
        ("'big' if row['a'] > 10 else 'small'", {"a": 11}, "big"),
        ("row['s'] in ['x', 'y'] and not row['b']", {"s": "x", "b": False}, True),
        ("len(str(row['a'])) == 3 and abs(-row['a']) // 7 % 5", {"a": 123}, 2),
        ("1 < row['a'] <= 3", {"a": 3}, True),
        ("{'k': 1}.get", {}, None),
    ][:7],
)
def test_expressions_evaluate(source: str, row: dict[str, object], value: object) -> None:
    assert compile_expression(source).evaluate(row) == value


@pytest.mark.parametrize(
    ("source", "row", "says"),
    [
        ("100 / row['v']", {"v": 0}, "division by zero"),
        ("row['missing'] > 1", {}, "'missing' not found"),
        ("row['s'] + 1", {"s": "x"}, "TypeError"),
        ("int(row['s'])", {"s": "x"}, "ValueError"),
    ],
)
def test_evaluation_errors_are_row_errors(source: str, row: dict[str, object], says: str) -> None:
    with pytest.raises(ExpressionError, match=says):
        compile_expression(source).evaluate(row)


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5),
                    st.lists(st.integers(), max_size=3))  # fmt: skip


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "s", "v"]), _VALUES, max_size=4))
def test_evaluation_never_raises_anything_but_expression_error(row: dict[str, object]) -> None:
    for source in (
        "row['a'] >= 5",
        "100 / row['v'] > 1",
        "row.get('s', '') + 'x' == 'ax'",
        "len(row['s']) > 2 or row['b']",
        "int(row.get('a', 0)) % 3 == 0",
        "-row['v'] * 2 in [1, 2, 3]",
    ):
        with contextlib.suppress(ExpressionError):  # the only exception allowed out
            compile_expression(source).evaluate(row)


def test_syntax_errors_are_reported_as_such() -> None:
    with pytest.raises(ExpressionSyntaxError, match="not a valid expression"):
        compile_expression("row['a'] >")


# -- the DAG ----------------------------------------------------------------------------------


def _dag_errors(tmp_path: Path, text: str) -> str:
    loaded = load_settings(_write(tmp_path, text), {})
    with pytest.raises(DagError) as err:
        build_dag(loaded.settings)
    return str(err.value)


def test_dangling_connections(tmp_path: Path) -> None:
    message = _dag_errors(tmp_path, BASE.replace("on_success: out\n", "on_success: nowhere\n"))
    assert "connection 'nowhere' (from t1) goes nowhere" in message


def test_a_connection_read_by_nothing_produced(tmp_path: Path) -> None:
    message = _dag_errors(tmp_path, BASE.replace("input: raw", "input: missing"))
    assert "reads connection 'missing', which nothing produces" in message


def test_two_producers_on_one_connection(tmp_path: Path) -> None:
    text = BASE.replace("on_success: out\n", "on_success: mid\n").replace(
        "sinks:",
        "- name: t2\n  plugin: passthrough\n  input: mid\n  on_success: out\n  on_error: discard\n"
        "- name: t3\n  plugin: passthrough\n  input: raw2\n  on_success: mid\n  on_error: discard\n"
        "gates:\n- name: g\n  input: nothing\n  condition: 'True'\n  routes: {'true': raw2}\nsinks:",
    )
    message = _dag_errors(tmp_path, text)
    assert "connection 'mid' has 2 producers" in message


def test_cycles(tmp_path: Path) -> None:
    text = BASE.replace("on_success: out\n", "on_success: loop\n") + (
        "gates:\n- name: g\n  input: loop\n  condition: row['n'] > 3\n  routes: {'true': out, 'false': back}\n"
    )
    text = text.replace("  input: raw\n", "  input: back\n").replace("on_success: raw", "on_success: back")
    message = _dag_errors(tmp_path, text)
    assert "cycle" in message or "producers" in message


def test_a_coalesce_whose_branches_no_fork_produces(tmp_path: Path) -> None:
    text = BASE.replace("on_success: out\n", "on_success: a\n").replace(
        "sinks:",
        "- name: t2\n  plugin: passthrough\n  input: a\n  on_success: b\n  on_error: discard\n"
        "coalesce:\n- name: j\n  branches: [b, c]\n  on_success: out\nsinks:",
    )
    message = _dag_errors(tmp_path, text)
    assert "branch 'b' is not produced by any fork" in message


def test_dag_and_plugin_option_errors_are_reported_together(tmp_path: Path) -> None:
    from engine.orchestrator import build_pipeline

    text = (
        BASE.replace("plugin: passthrough", "plugin: truncate")
        .replace("on_error: discard", "on_error: discard\n  options: {fields: {a: 'x'}}\n  on_success: nowhere")
        .replace("  on_success: out\n  on_error", "  on_error")
    )
    loaded = load_settings(_write(tmp_path, text), {})
    with pytest.raises(SettingsError) as err:
        build_pipeline(loaded)
    lines = str(err.value).splitlines()
    assert any("goes nowhere" in line for line in lines)
    assert any("transforms[0].options.fields.a" in line for line in lines)
