"""Settings: every real pipeline loads; every mistake is named with file, key path and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.cli.purge import parse_duration
from engine.dag import build_dag
from engine.orchestrator import pipeline_problems
from engine.plugins.protocol import PluginConfigError
from engine.plugins.registry import build_plugin
from engine.secrets import fingerprint, is_secret_key
from engine.settings import CoalesceSettings, SettingsError, load_settings

CONFORMANCE = Path(__file__).resolve().parent / "corpus" / "examples"  # the prior system's (see its README)
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


def _errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SettingsError) as err:
        load_settings(_write(tmp_path, text), env or {})
    prefix = f"{tmp_path / 'settings.yaml'}: "
    assert str(err.value) == "\n".join(err.value.errors)
    for line in err.value.errors:
        assert line.startswith(prefix), line  # every error names the file
    return [line.removeprefix(prefix) for line in err.value.errors]


def test_the_real_pipelines_are_here() -> None:
    assert len([p for p in SETTINGS_FILES if CONFORMANCE in p.parents]) >= 12


@pytest.mark.parametrize("path", SETTINGS_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_pipeline_loads_and_builds_a_dag(path: Path) -> None:
    loaded = load_settings(path, {})
    dag = build_dag(loaded.settings)
    assert set(dag.node_order) == set(dag.nodes)
    assert set(loaded.gate_conditions) == {g.name for g in loaded.settings.gates}
    assert len(loaded.text_hash) == 64


def test_a_sqlite_landscape_url_is_one_warning(tmp_path: Path) -> None:
    loaded = load_settings(_write(tmp_path, BASE + "landscape: {url: 'sqlite:///runs/audit.db'}\n"), {})
    assert len(loaded.warnings) == 1
    assert "landscape.url sqlite:///runs/audit.db is not an audit store here" in loaded.warnings[0]
    assert "PostgreSQL" in loaded.warnings[0]


def test_malformed_yaml_names_line_and_column(tmp_path: Path) -> None:
    (line,) = _errors(tmp_path, "source:\n  plugin: csv\n  options: {path: [unclosed\n")
    assert line.startswith("malformed YAML at line 4, column")


def test_a_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    (line,) = _errors(tmp_path, "- just\n- a list\n")
    assert line.startswith("(top): found a list; allowed: a mapping of source, sinks")


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", {})


def test_unknown_keys_are_named_with_their_path_and_the_allowed_keys(tmp_path: Path) -> None:
    lines = _errors(tmp_path, BASE.replace("  on_error: discard", "  on_error: discard\n  retries: 3"))
    assert lines == ["transforms[0].retries: unknown key; allowed: name, plugin, input, on_error, on_success, options"]


def test_unknown_top_level_and_nested_keys(tmp_path: Path) -> None:
    lines = _errors(tmp_path, BASE + "pipelines: []\nlandscape: {export: {fmt: x}}\n")
    assert lines[0].startswith("pipelines: unknown key; allowed: source, sinks, transforms")
    assert lines[1] == "landscape.export.fmt: unknown key; allowed: enabled, format, sign"


def test_wrong_types_say_what_was_found_and_what_is_allowed(tmp_path: Path) -> None:
    text = BASE.replace("plugin: passthrough", "plugin: 5").replace("{plugin: csv,", "{plugin: [csv],")
    lines = _errors(tmp_path, text)
    assert "sinks.out.plugin: found a list; allowed: a string" in lines
    assert "transforms[0].plugin: found an integer (5); allowed: a string" in lines


def test_a_value_outside_its_choices_lists_them(tmp_path: Path) -> None:
    text = BASE + "coalesce:\n- {name: c, branches: [a, b], policy: quorm}\n"
    assert "coalesce[0].policy: found a string ('quorm'); allowed: require_all, quorum, best_effort, first" in (
        _errors(tmp_path, text)
    )


def test_unquoted_yes_no_keys_get_a_hint(tmp_path: Path) -> None:
    text = BASE.replace("on_success: out\n", "on_success: g_in\n") + (
        "gates:\n- {name: g, input: g_in, condition: 'True', routes: {true: out}}\n"
    )
    (line,) = _errors(tmp_path, text)
    assert line.startswith("gates[0].routes: the key True is a boolean") and "quote them" in line


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ("{mapping: {customer: c, 12: x}}", "transforms[0].options.mapping: found a key that is an integer (12)"),
        ("{fields: {note: 12, false: 3}}", "transforms[0].options.fields: found a key that is a boolean (False)"),
        ("{deep: [{a: 1}, {~: 2}]}", "transforms[0].options.deep[1]: found a key that is nothing"),
        ("{fields: {0123: 5}}", "transforms[0].options.fields: found a key that is an integer (83)"),
    ],
)
def test_an_option_key_that_is_not_text_is_named_with_its_path(tmp_path: Path, options: str, says: str) -> None:
    """Keys are recorded with the settings, as text: one YAML read as a number, a boolean or
    null is named where it is, not left to the recorder's words about dicts."""
    (line,) = _errors(tmp_path, BASE.replace("  on_error: discard\n", f"  on_error: discard\n  options: {options}\n"))
    assert line.startswith(says) and "allowed: keys that are text (in quotes" in line, line


def test_a_source_option_key_that_is_not_text_is_named_too(tmp_path: Path) -> None:
    """YAML's `no:` as a csv header name was once the key 'False'."""
    text = BASE.replace("options: {path: in.csv}", "options: {path: in.csv, field_mapping: {no: b}}")
    (line,) = _errors(tmp_path, text)
    assert line.startswith("source.options.field_mapping: found a key that is a boolean (False)"), line


@pytest.mark.parametrize(("value", "found"), [("maybe", "'maybe'"), ("3", "3"), ("'no'", "'no'"), ("false", None)])
def test_the_csv_source_multiline_option_is_true_or_false(tmp_path: Path, value: str, found: str | None) -> None:
    """(Plugin options are checked when the pipeline is built, as `validate` does.)"""
    text = BASE.replace("options: {path: in.csv}", f"options: {{path: in.csv, multiline: {value}}}")
    problems = pipeline_problems(load_settings(_write(tmp_path, text), {}))
    assert problems == ([] if found is None else [f"{tmp_path / 'settings.yaml'}: source.options.multiline: found "
                                                   f"{found}; allowed: true or false"])  # fmt: skip


def test_missing_required_keys(tmp_path: Path) -> None:
    lines = _errors(tmp_path, BASE.replace("  on_error: discard\n", "").replace("{plugin: csv, ", "{"))
    assert "sinks.out.plugin: missing; it is required (allowed: a plugin name, see `elspeth plugins`)" in lines
    assert "transforms[0].on_error: missing; it is required (allowed: a sink name or discard)" in lines


def test_a_missing_section(tmp_path: Path) -> None:
    assert _errors(tmp_path, "source: {plugin: csv, on_success: out}\n") == [
        "sinks: missing; it is required (allowed: a mapping of name -> a mapping of plugin, options, on_write_failure)"
    ]


def test_several_errors_in_one_item_and_across_sections_are_reported_together(tmp_path: Path) -> None:
    text = (
        BASE.replace("  on_error: discard\n", "  retries: 3\n  input2: x\n")
        + "gates:\n- name: g\n  input: x\n  condition: 1\n  routes: 5\n"
        + "aggregations:\n- {name: a, plugin: batch_stats, input: q, on_success: out, on_error: discard, "
        "trigger: {count: many}}\n"
    )
    lines = _errors(tmp_path, text)
    assert any(line.startswith("transforms[0].retries: unknown key") for line in lines)
    assert any(line.startswith("transforms[0].input2: unknown key") for line in lines)
    assert any(line.startswith("transforms[0].on_error: missing") for line in lines)
    assert "gates[0].condition: found an integer (1); allowed: a string" in lines
    assert any(line.startswith("gates[0].routes: found an integer (5); allowed: a mapping") for line in lines)
    assert "aggregations[0].trigger.count: found a string ('many'); allowed: an integer or nothing" in lines


def test_environment_variables_expand_with_defaults(tmp_path: Path) -> None:
    text = BASE.replace("path: in.csv", "path: '${IN_DIR}/in.csv'").replace("out.csv", "'${OUT:-result}.csv'")
    loaded = load_settings(_write(tmp_path, text), {"IN_DIR": "/data"})
    assert loaded.settings.source.options["path"] == "/data/in.csv"
    assert loaded.settings.sinks["out"].options["path"] == "result.csv"
    assert load_settings(_write(tmp_path, text), {"IN_DIR": "/d", "OUT": "x"}).settings.sinks["out"].options == {
        "path": "x.csv"
    }


def test_an_expanded_number_is_a_number(tmp_path: Path) -> None:
    text = BASE.replace("options: {path: in.csv}", "options: {path: in.csv, skip_rows: '${SKIP:-2}'}")
    text += "retry: {max_attempts: '${TRIES:-5}'}\ncheckpoint: {frequency: '${FREQ:-7}'}\n"
    loaded = load_settings(_write(tmp_path, text), {})
    assert loaded.settings.retry.max_attempts == 5
    assert loaded.settings.checkpoint.commit_every_rows() == 7
    source = build_plugin("source", "csv", loaded.settings.source.options)
    assert source.skip_rows == 2
    with pytest.raises(PluginConfigError, match="skip_rows: found 'two'; allowed: an integer"):
        build_plugin("source", "csv", {**loaded.settings.source.options, "skip_rows": "two"})


def test_a_missing_environment_variable_is_named_with_its_key(tmp_path: Path) -> None:
    lines = _errors(tmp_path, BASE.replace("path: in.csv", "path: '${IN_DIR}/in.csv'"))
    assert lines == [
        "source.options.path: environment variable IN_DIR is not set; allowed: set it, or give a default as "
        "${IN_DIR:-default}"
    ]


@pytest.mark.parametrize(
    ("condition", "says"),
    [
        ("__import__('os').system('true')", "calls to '__import__' are not allowed"),
        ("row.keys()", "attribute access is not allowed"),
        ("row['a'].upper() == 'X'", "attribute access is not allowed"),
        ("open('/etc/passwd')", "calls to 'open' are not allowed"),
        ("(lambda: 1)()", "lambda is not allowed"),
        ("[x for x in row]", "comprehensions are not allowed"),
    ],
)
def test_unsafe_gate_expressions_are_rejected_at_load_naming_the_gate(
    tmp_path: Path, condition: str, says: str
) -> None:
    text = BASE.replace("on_success: out\n", "on_success: gated\n") + (
        f"gates:\n- name: risky\n  input: gated\n  condition: {condition!r}\n  routes: {{'true': out, 'false': out}}\n"
    )
    (line,) = _errors(tmp_path, text)
    assert line.startswith(f"gates[0].condition (gate 'risky'): {says}")


def test_trigger_conditions_are_compiled_at_load(tmp_path: Path) -> None:
    agg = (
        "aggregations:\n- {name: agg, plugin: batch_stats, input: q, on_success: out, on_error: discard, "
        "trigger: {condition: CONDITION}}\n"
    )
    text = BASE.replace("on_success: out\n", "on_success: q\n") + agg
    (line,) = _errors(tmp_path, text.replace("CONDITION", "\"row['batch_count'].bit_length() > 2\""))
    assert line.startswith("aggregations[0].trigger.condition (aggregation 'agg'): attribute access")
    (line,) = _errors(tmp_path, text.replace("CONDITION", "\"row['batch_cout'] > 2 or row.get('v') == 1\""))
    assert line.endswith("found row['batch_cout'], row['v']; allowed: row['batch_count'], row['batch_age_seconds']")
    (line,) = _errors(tmp_path, text.replace("CONDITION", '"len(row) > 2"'))
    assert "found the whole row or a computed key" in line
    loaded = load_settings(_write(tmp_path, text.replace("CONDITION", "\"row['batch_count'] >= 3\"")), {})
    assert loaded.trigger_conditions["agg"].evaluate({"batch_count": 3, "batch_age_seconds": 0.5}) is True


def test_names(tmp_path: Path) -> None:
    text = BASE.replace("name: t1", "name: 'bad name!'") + (
        "gates:\n- {name: fork, input: a, condition: 'True', routes: {'true': out}}\n"
        "- {name: __x, input: b, condition: 'True', routes: {'true': out}}\n"
        "- {name: source, input: c, condition: 'True', routes: {'true': out}}\n"
        "coalesce:\n- {name: out, branches: [a, b]}\n"
    )
    text = text.replace("  out: {plugin", "  out: {plugin: csv}\n  Big: {plugin")
    lines = _errors(tmp_path, text)
    assert "transforms[0].name: 'bad name!' is not a valid name; allowed: 1 to 38 of A-Z a-z 0-9 _ -" in lines
    assert any(line.startswith("gates[0].name: 'fork' is reserved") for line in lines)
    assert any(line.startswith("gates[1].name: '__x' is reserved") for line in lines)
    assert any(line.startswith("gates[2].name: 'source' is reserved") for line in lines), lines
    assert "sinks.Big: 'Big' has capitals; allowed: a lowercase sink name" in lines
    assert "sinks.out: 'out' is already the name of coalesce[0]; allowed: a unique name" in lines


def test_semantic_checks(tmp_path: Path) -> None:
    text = BASE + (
        "gates:\n- {name: g, input: x, condition: 'True', routes: {'true': fork}, on_error: nope}\n"
        "coalesce:\n- {name: j, branches: [a], policy: quorum}\n"
        "- {name: k, branches: [a, b], policy: best_effort, merge: select, select_branch: c}\n"
        "- {name: m, branches: [a, b], policy: quorum, quorum_count: 3}\n"
        "- {name: n, branches: [a, b], quorum_count: 1, select_branch: a}\n"
        "aggregations:\n- {name: agg, plugin: batch_stats, input: q, on_success: out, on_error: nowhere, trigger: {}}\n"
        "checkpoint: {frequency: sometimes}\n"
    )
    lines = _errors(tmp_path, text)
    assert "gates[0].fork_to: missing; it is required when a route is 'fork' (a list of branches)" in lines
    assert "gates[0].on_error: 'nope' is not a sink; allowed: discard, out" in lines
    assert "coalesce[0].branches: found 1 branch(es); allowed: at least 2" in lines
    assert "coalesce[0].quorum_count: missing; it is required for policy quorum" in lines
    assert "coalesce[1].timeout_seconds: missing; it is required for policy best_effort" in lines
    assert "coalesce[1].select_branch: found 'c'; allowed: a, b" in lines
    assert "coalesce[2].quorum_count: found 3; allowed: 1 to 2 (the number of branches)" in lines
    # options the policy or the merge does not read: a forgotten `merge: select` merged by union
    assert (
        "coalesce[3].quorum_count: found 1 with policy require_all, which does not read it; allowed: policy: quorum, "
        "or no quorum_count"
    ) in lines
    assert (
        "coalesce[3].select_branch: found 'a' with merge union, which does not read it; allowed: merge: select, or "
        "no select_branch"
    ) in lines
    assert "aggregations[0].on_error: 'nowhere' is not a sink; allowed: discard, out" in lines
    assert "aggregations[0].trigger: found no trigger; allowed: at least one of count, timeout_seconds, condition" in (
        lines
    )
    assert any(line.startswith("checkpoint.frequency: found 'sometimes'; allowed:") for line in lines)


def test_fork_to_without_a_fork_route(tmp_path: Path) -> None:
    text = BASE + "gates:\n- {name: g, input: x, condition: 'True', routes: {'true': out}, fork_to: [a, b]}\n"
    assert _errors(tmp_path, text) == ["gates[0].fork_to: found a list; allowed only when a route is 'fork'"]


def test_on_write_failure_and_on_validation_failure_name_sinks(tmp_path: Path) -> None:
    text = BASE.replace("options: {path: in.csv}", "options: {path: in.csv, on_validation_failure: bad}").replace(
        "{plugin: csv, options: {path: out.csv}}", "{plugin: csv, on_write_failure: out}"
    )
    lines = _errors(tmp_path, text)
    assert "source.options.on_validation_failure: 'bad' is not a sink; allowed: discard, out" in lines
    assert (
        "sinks.out.on_write_failure: 'out' is the sink itself, whose writes failed; allowed: discard, (no sinks)"
        in lines
    )


@pytest.mark.parametrize(
    ("checkpoint", "rows"),
    [
        ("{}", 1000),
        ("{frequency: 50}", 50),
        ("{frequency: every_row}", 1),
        ("{frequency: every_n, checkpoint_interval: 20}", 20),
        ("{frequency: aggregation_only, aggregation_boundaries: true}", 1000),
        ("{enabled: false}", 1000),
    ],
)
def test_checkpoint_frequency_sets_rows_per_commit(tmp_path: Path, checkpoint: str, rows: int) -> None:
    loaded = load_settings(_write(tmp_path, BASE + f"checkpoint: {checkpoint}\n"), {})
    assert loaded.settings.checkpoint.commit_every_rows() == rows


def test_every_n_needs_an_interval(tmp_path: Path) -> None:
    assert _errors(tmp_path, BASE + "checkpoint: {frequency: every_n}\n") == [
        "checkpoint.checkpoint_interval: missing; it is required when frequency is every_n"
    ]


def test_branch_inputs() -> None:
    assert CoalesceSettings(name="c", branches=["a", "b"]).branch_inputs() == {"a": "a", "b": "b"}
    assert CoalesceSettings(name="c", branches={"a": "x", "b": "y"}).branch_inputs() == {"a": "x", "b": "y"}


def test_secrets_are_recorded_only_as_fingerprints(tmp_path: Path) -> None:
    text = BASE.replace(
        "out: {plugin: csv, options: {path: out.csv}}",
        "out: {plugin: database, options: {url: 'postgresql://app:hun@ter2@db/x?sslpassword=s3cr3t', table: t, "
        "api_key: abc123, auth: {token: tok-1, password: pw-1}, data_key: items}}",
    )
    env = {"ELSPETH_FINGERPRINT_KEY": "k1"}
    loaded = load_settings(_write(tmp_path, text), env)
    recorded = str(loaded.redacted)
    for secret in ("hun@ter2", "ter2", "s3cr3t", "abc123", "tok-1", "pw-1"):
        assert secret not in recorded
    options = loaded.redacted["sinks"]["out"]["options"]
    assert options["api_key"] == fingerprint("abc123", env)
    assert (
        options["url"]
        == f"postgresql://app:{fingerprint('hun@ter2', env)}@db/x?sslpassword={fingerprint('s3cr3t', env)}"
    )
    assert options["data_key"] == "items"  # not a secret: it names a field
    assert loaded.settings.sinks["out"].options["api_key"] == "abc123"  # the plugin still gets it
    other_home = {"ELSPETH_HOME": str(tmp_path / "home")}  # no key given: the home's own key
    assert fingerprint("abc123", env) != fingerprint("abc123", other_home)  # keyed


def test_the_sqlite_warning_does_not_show_a_password(tmp_path: Path) -> None:
    loaded = load_settings(_write(tmp_path, BASE + "landscape: {url: 'sqlite://u:pw9@/x.db'}\n"), {})
    assert "pw9" not in loaded.warnings[0]


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("db_password", True),
        ("apiKey", True),
        ("api_key", True),
        ("key", True),
        ("auth_token", True),
        ("client_secret", True),
        ("credentials", True),
        ("data_key", False),
        ("key_field", False),
        ("max_tokens", False),
        ("path", False),
    ],
)
def test_which_keys_are_secret(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_the_hash_is_of_the_expanded_settings(tmp_path: Path) -> None:
    text = BASE.replace("path: in.csv", "path: '${IN}'")
    a = load_settings(_write(tmp_path, text), {"IN": "a.csv"}).text_hash
    b = load_settings(_write(tmp_path, text), {"IN": "b.csv"}).text_hash
    c = load_settings(_write(tmp_path, text + "# a comment\n"), {"IN": "a.csv"}).text_hash
    assert a != b and a == c


def test_the_hash_cannot_confirm_a_guessed_secret(tmp_path: Path) -> None:
    """The recorded hash is of the recorded (redacted) settings: with them in hand, putting a
    guessed password back and hashing must not confirm it."""
    import hashlib

    import msgspec

    text = BASE.replace(
        "out: {plugin: csv, options: {path: out.csv}}", "out: {plugin: database, options: {url: '${URL}', table: t}}"
    )
    env = {"URL": "postgresql://app:sunshine@db/x", "ELSPETH_FINGERPRINT_KEY": "k1"}
    loaded = load_settings(_write(tmp_path, text), env)
    guessed = msgspec.json.decode(msgspec.json.encode(loaded.redacted))
    assert guessed["sinks"]["out"]["options"]["url"] != env["URL"]
    guessed["sinks"]["out"]["options"]["url"] = env["URL"]
    assert hashlib.sha256(msgspec.json.encode(guessed, order="deterministic")).hexdigest() != loaded.text_hash
    assert loaded.text_hash == hashlib.sha256(msgspec.json.encode(loaded.redacted, order="deterministic")).hexdigest()
    other = load_settings(_write(tmp_path, text), {**env, "URL": "postgresql://app:rain@db/x"})
    assert other.text_hash != loaded.text_hash  # a changed secret still changes the settings


def test_a_key_given_twice_is_a_warning_with_its_line(tmp_path: Path) -> None:
    loaded = load_settings(_write(tmp_path, BASE + "  out: {plugin: json}\n"), {})
    assert loaded.settings.sinks["out"].plugin == "json"  # the last one, as the prior system did
    assert loaded.warnings == [
        f"{tmp_path / 'settings.yaml'}: line 14, column 3: key 'out' appears twice in one mapping; the last one is used"
    ]


def test_a_key_given_twice_is_said_among_the_errors_it_may_explain(tmp_path: Path) -> None:
    """A second, partial `source:` replaces the first: the error it causes was said alone, and
    the warning that would explain it never came (the file did not load)."""
    lines = _errors(tmp_path, BASE + "source:\n  plugin: csv\n")
    assert any(line.startswith("source.on_success: missing") for line in lines), lines
    assert any("key 'source' appears twice in one mapping; the last one is used" in line for line in lines), lines


def test_aliases_cannot_blow_up(tmp_path: Path) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        levels.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
    (line,) = _errors(tmp_path, "\n".join(levels) + "\n")
    assert line == "(top): more than 1000000 values once YAML aliases are expanded"


def test_yaml_merge_keys_work_as_in_any_yaml_file(tmp_path: Path) -> None:
    sinks = """sinks:
  spare: &csv {plugin: csv, options: {path: spare.csv}}
  out:
    <<: *csv
    options: {path: out.csv}
"""
    text = BASE.replace("sinks:\n  out: {plugin: csv, options: {path: out.csv}}\n", sinks)
    loaded = load_settings(_write(tmp_path, text), {})
    assert loaded.settings.sinks["out"].plugin == "csv"
    assert loaded.settings.sinks["out"].options == {"path": "out.csv"}  # the mapping's own key wins
    assert not loaded.warnings  # a merged key is not a duplicate


@pytest.mark.parametrize("url", ["mysql://a@b/c", "notaurl"])
def test_a_landscape_url_that_is_not_postgresql_is_refused(tmp_path: Path, url: str) -> None:
    lines = _errors(tmp_path, BASE + f"landscape: {{url: '{url}'}}\n")
    assert len(lines) == 1 and "landscape.url: found" in lines[0] and "allowed: a postgresql:// URL" in lines[0]


def test_a_number_too_large_for_a_setting_says_it_reads_as_one(tmp_path: Path) -> None:
    """YAML 1.1 reads 1.0e400 as text; converted, it is out of range: "found a string ('1.0e400');
    allowed: a number" left the reader wondering (a review)."""
    lines = _errors(tmp_path, BASE + "retry: {max_delay_seconds: 1.0e400}\n")
    assert len(lines) == 1 and "retry.max_delay_seconds: found a string" in lines[0], lines
    assert "(it reads as a number out of the range this setting takes)" in lines[0], lines


@pytest.mark.parametrize(("url", "said"), [("postgresql://[::1", "Invalid IPv6 URL"), ("postgresql://h:x/d", "Port")])
def test_a_postgresql_url_the_run_could_not_open_is_refused_by_validate(tmp_path: Path, url: str, said: str) -> None:
    """`validate` said OK, the run then failed on the URL (a review)."""
    lines = _errors(tmp_path, BASE + f"landscape: {{url: '{url}'}}\n")
    assert len(lines) == 1 and "landscape.url: malformed database URL" in lines[0] and said in lines[0], lines


def test_the_prior_systems_sqlite_landscape_url_is_a_warning(tmp_path: Path) -> None:
    loaded = load_settings(_write(tmp_path, BASE + "landscape: {url: 'sqlite:///audit.db'}\n"), {})
    assert len(loaded.warnings) == 1 and "is not an audit store here (SQLite)" in loaded.warnings[0]


def test_a_pipeline_without_sinks_is_refused(tmp_path: Path) -> None:
    lines = _errors(tmp_path, BASE.replace("  out: {plugin: csv, options: {path: out.csv}}", "  {}"))
    assert "sinks: found no sinks; allowed: a mapping of at least one sink name -> {plugin, options}" in lines


def test_export_and_retention_settings_are_accepted_with_a_word_on_what_does_that_instead(tmp_path: Path) -> None:
    """A user who relies on the prior system's keys must not be left thinking they act: a row's
    data would be kept for good while retention_days said 30."""
    loaded = load_settings(_write(tmp_path, BASE + "landscape: {export: {enabled: true, format: jsonl}}\n"), {})
    assert len(loaded.warnings) == 1 and "not acted on" in loaded.warnings[0]
    assert "`elspeth export RUN_ID -o FILE`" in loaded.warnings[0]
    loaded = load_settings(_write(tmp_path, BASE + "payload_store: {retention_days: 30}\n"), {})
    assert (
        len(loaded.warnings) == 1 and "retention_days is recorded with the run but not acted on" in loaded.warnings[0]
    )
    assert "`elspeth purge --older-than 30d --reason TEXT`" in loaded.warnings[0]
    # More than purge takes: the command suggested is one it accepts, and the warning says why.
    loaded = load_settings(_write(tmp_path, BASE + "payload_store: {retention_days: 1000000}\n"), {})
    [warning] = loaded.warnings
    suggested = re.search(r"`elspeth purge --older-than (\S+) --reason TEXT`", warning)
    assert suggested and suggested.group(1) == "700000d" and "is the longest purge takes" in warning, warning
    parse_duration(suggested.group(1))


def test_a_sqlalchemy_style_postgresql_landscape_url_is_accepted(tmp_path: Path) -> None:
    loaded = load_settings(_write(tmp_path, BASE + "landscape: {url: 'postgresql+psycopg2://u@h/db'}\n"), {})
    assert loaded.settings.landscape.url == "postgresql+psycopg2://u@h/db" and not loaded.warnings


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "0"])
def test_timeouts_must_be_finite_and_positive(tmp_path: Path, value: str) -> None:
    # NaN passes every `<= 0` test, and a NaN deadline at the top of the deadline heap would keep
    # every other deadline from firing.
    text = BASE + (
        f"coalesce:\n- {{name: j, branches: [a, b], policy: best_effort, timeout_seconds: {value}}}\n"
        "aggregations:\n- {name: agg, plugin: batch_stats, input: q, on_success: out, on_error: discard,\n"
        f"   trigger: {{timeout_seconds: {value}}}}}\n"
    )
    lines = _errors(tmp_path, text)
    assert any(
        line.startswith("coalesce[0].timeout_seconds: found ") and "allowed: a finite number more than 0" in line
        for line in lines
    ), lines
    assert any(
        line.startswith("aggregations[0].trigger.timeout_seconds: found ")
        and "allowed: a finite number more than 0" in line
        for line in lines
    ), lines


@pytest.mark.parametrize("key", ["initial_delay_seconds", "max_delay_seconds", "exponential_base", "reset_seconds"])
@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_retry_numbers_must_be_finite(tmp_path: Path, key: str, value: str) -> None:
    lines = _errors(tmp_path, BASE + f"retry: {{{key}: {value}}}\n")
    assert len(lines) == 1 and lines[0].startswith(f"retry.{key}: found ") and "allowed: a finite number" in lines[0]


def test_a_huge_integer_retry_count_is_a_value_not_a_traceback(tmp_path: Path) -> None:
    loaded = load_settings(_write(tmp_path, BASE + f"retry: {{max_attempts: {10**400}}}\n"), {})
    assert loaded.settings.retry.max_attempts == 10**400


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("source.options.path", BASE.replace("{path: in.csv}", '{path: "in\\0.csv"}')),
        ("sinks.out.options.path", BASE.replace("{path: out.csv}", '{path: "out\\0.csv"}')),
        ("sinks.out.options.url", BASE.replace("{plugin: csv, options: {path: out.csv}}",
                                               '{plugin: database, options: {url: "sqlite:///o\\0.db", table: t}}')),
        ("sinks.out.options.table", BASE.replace("{plugin: csv, options: {path: out.csv}}",
                                                 '{plugin: database, options: {url: "sqlite:///o.db", table: "t\\0"}}')),
        ("landscape.signing_key", BASE + 'landscape: {signing_key: "k\\0.key"}\n'),
        ("landscape.witness_dir", BASE + 'landscape: {witness_dir: "w\\0"}\n'),
        ("landscape.url", BASE + 'landscape: {url: "postgresql://u@h/d\\0"}\n'),
    ],
)  # fmt: skip
def test_a_nul_in_a_path_is_one_line(tmp_path: Path, where: str, text: str) -> None:
    lines = _errors(tmp_path, text)
    what = "a table name" if where.endswith(".table") else "a path or URL"
    assert f"{where}: found a NUL character (\\0); allowed: {what} without one" in lines, lines


@pytest.mark.parametrize("depth", [65, 200, 600, 5000])
def test_yaml_nested_too_deeply_is_one_line(tmp_path: Path, depth: int) -> None:
    # The parser itself recurses once per level (a RecursionError past a few hundred), and so
    # does everything after it: refused with one line either way.
    text = BASE.replace("{path: in.csv}", "{path: in.csv, x: " + "[" * depth + "]" * depth + "}")
    (line,) = _errors(tmp_path, text)
    assert "nested too deeply" in line and "allowed: at most 64 levels of mappings and lists" in line


def test_yaml_nested_as_deep_as_allowed_loads(tmp_path: Path) -> None:
    depth = 64 - 3  # the top mapping, source, options
    load_settings(
        _write(tmp_path, BASE.replace("{path: in.csv}", "{path: in.csv, x: " + "[" * depth + "]" * depth + "}")), {}
    )


@pytest.mark.parametrize("policy", ["first", "require_all"])
def test_policy_first_with_merge_select_is_a_warning_that_says_what_it_does(tmp_path: Path, policy: str) -> None:
    """Valid (the prior system's), but a row whose first branch to arrive is not the selected one
    fails: a user meaning "wait for that branch" is told, before rows fail one by one."""
    text = BASE + f"coalesce:\n- {{name: j, branches: [a, b], policy: {policy}, merge: select, select_branch: b}}\n"
    warnings = load_settings(_write(tmp_path, text), {}).warnings
    if policy == "require_all":
        assert warnings == []
        return
    (warning,) = warnings
    assert "coalesce[0] (j): policy first merges on the first branch to arrive" in warning
    assert "fails (select_missing); to wait for b, use policy require_all, quorum or best_effort" in warning


def test_a_trigger_condition_that_fails_for_any_batch_is_refused_with_its_key_path(tmp_path: Path) -> None:
    text = BASE.replace("on_success: out\n  on_error: discard\n", "on_success: q\n  on_error: discard\n") + (
        "aggregations:\n- {name: agg, plugin: batch_stats, input: q, on_success: out, on_error: discard, "
        "options: {value_field: v}, trigger: {condition: \"row['batch_count'] / 0 > 1\"}}\n"
    )
    (line,) = _errors(tmp_path, text)
    assert line.startswith(
        "aggregations[0].trigger.condition (aggregation 'agg'): it cannot be evaluated for a batch"
    ), line
    assert line.endswith("(batch_count 1, batch_age_seconds 0.0 or 1.0): division by zero"), line
    # a rate fails only at age 0, which a run does not meet: left to run (it fails the run on record if it does)
    rate = text.replace("row['batch_count'] / 0 > 1", "row['batch_count'] / row['batch_age_seconds'] > 1000")
    assert load_settings(_write(tmp_path, rate), {}).trigger_conditions["agg"] is not None


def test_a_nul_in_the_yaml_is_one_line(tmp_path: Path) -> None:
    """PyYAML's ReaderError spans two lines; the error stays one (a hostile review)."""
    (line,) = _errors(tmp_path, BASE.replace("{path: in.csv}", "{path: in.csv\x00}"))
    assert "malformed YAML: unacceptable character #x0000" in line and "\n" not in line, line


@pytest.mark.parametrize(("plugin", "warned"), [("csv", True), ("json", False)])
def test_a_csv_quarantine_sink_is_a_warning_that_says_which_rows_it_refuses(
    tmp_path: Path, plugin: str, warned: bool
) -> None:
    """A line that could not be parsed and a row that did not fit have different fields; the
    first one a CSV file takes fixes its columns, and the other kind is refused there."""
    text = BASE.replace("{path: in.csv}", "{path: in.csv, on_validation_failure: bad}") + (
        f"  bad: {{plugin: {plugin}, options: {{path: bad.out}}}}\n"
    )
    warnings = load_settings(_write(tmp_path, text), {}).warnings
    assert any("sinks.bad is a CSV file" in w and "is refused there" in w for w in warnings) == warned, warnings


@pytest.mark.parametrize(
    ("condition", "routes", "warned"),
    [
        ("row['id'] == 1", "{'true': out}", True),
        ("row['id'] == 1", "{'true': out, 'false': out}", False),
        (" True", "{'true': out}", False),  # a gate that only forks: never false (the shipped example's)
        ("False", "{'true': out}", True),
    ],
)
def test_a_gate_routing_true_and_not_false_is_a_warning(
    tmp_path: Path, condition: str, routes: str, warned: bool
) -> None:
    """Valid, but a true/false condition then fails every row it is false for, in a run that
    completes (a new user's review)."""
    text = BASE + f'gates:\n- {{name: g, input: x, condition: "{condition}", routes: {routes}}}\n'
    warnings = load_settings(_write(tmp_path, text), {}).warnings
    found = [w for w in warnings if "gates[0].routes (g) has 'true' and no 'false'" in w]
    assert bool(found) == warned, warnings


@pytest.mark.parametrize(("on_error", "warned"), [("out", True), ("discard", False)])
def test_an_aggregations_on_error_sink_is_a_warning_that_it_receives_nothing(
    tmp_path: Path, on_error: str, warned: bool
) -> None:
    """Required and valid (the prior system's), but a batch error fails every row of the batch: a
    user who names a sink there expects the failed rows in it, and it stays empty (a careless
    user's review)."""
    text = BASE + (
        "aggregations:\n- {name: agg, plugin: batch_stats, input: x, on_success: out, "
        f"on_error: {on_error}, trigger: {{count: 2}}, options: {{value_field: v}}}}\n"
    )
    warnings = load_settings(_write(tmp_path, text), {}).warnings
    found = [w for w in warnings if "aggregations[0].on_error (agg): 'out' receives nothing" in w]
    assert bool(found) == warned, warnings


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ('{path: in.csv, note: "a\\ud800b"}', 'source.options.note: found "a\\ud800b"'),
        ('{path: in.csv, "k\\udfff": 1}', 'source.options: found "k\\udfff"'),
        ('{path: in.csv, x: [1, "\\udc80"]}', 'source.options.x[1]: found "\\udc80"'),
        ('{path: in.csv, s: !!set {"a\\ud800": null}}', 'source.options.s[0]: found "a\\ud800"'),
        ('{path: in.csv, p: !!pairs [k: "a\\ud800"]}', 'source.options.p[0][1]: found "a\\ud800"'),
        ('{path: in.csv, o: !!omap [k: "a\\ud800"]}', 'source.options.o[0][1]: found "a\\ud800"'),
        ('{path: in.csv, n: "line\\nnext\\ud800"}', 'source.options.n: found "line\\nnext\\ud800"'),
        ('{path: in.csv, long: "' + "x" * 100 + '\\ud800"}', 'source.options.long: found "' + "x" * 40 + '…"'),
    ],
)
def test_text_with_a_lone_surrogate_is_named_where_it_is(tmp_path: Path, options: str, says: str) -> None:
    """A YAML escape can spell a lone surrogate, which is not Unicode text and which nothing can
    record: once a traceback from the recorder's encoder, now one line naming the key path, with
    the surrogate escaped (the terminal cannot print it either)."""
    (line,) = _errors(tmp_path, BASE.replace("options: {path: in.csv}", f"options: {options}"))
    assert line.startswith(says) and "a lone surrogate" in line and "allowed: text that UTF-8 can hold" in line, line
    line.encode()  # printable
