"""`field_problems` against `process`: every problem a transform reports for rows holding given
fields (behind a source's schema of mode fixed, as `elspeth validate` asks it) really happens to
such rows, and a value lost where no design loses it is reported.

A refusal of settings that would have worked is a regression for users, so each kind of claim is
checked against what `process` does with a row holding every field (values all distinct, some of
them objects a dotted source can reach into):

- "reads 'X' inside 'H', which the pair ... renamed away": the pair changes nothing;
- "renames 'A' onto 'B', which the row holds, and the later pair ... reads": the row held B before
  the pair, the later pair reads B as the pair left it, and B's value is nowhere in the output;
- "writes 'N', which the later pair ... writes again": after that later pair, N does not hold
  this pair's value.

The pairs run one after another (without select_only), so the row as the pairs before one left it
is what `process` makes of the mapping up to it. A field is one every row holds at a pair when a
row none of whose values is an object (no dotted source finds anything) holds it there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from engine.plugins.protocol import PluginConfigError, RowError
from engine.plugins.transforms import FieldMapper, JsonExplode

POOL = ("a", "b", "c", "d")
FIELDS = (*POOL, "a.x")  # a field whose own name holds a dot (a CSV header may)
NEW = (*POOL, "tmp")
SOURCES = (*NEW, *(f"{h}.{leaf}" for h in NEW for leaf in ("x", "y")))
MISSING = object()


def _lookup(row: Mapping[str, Any], source: str) -> Any:
    """What a field_mapper source names (docs/settings.md): a field, or with dots a path into nested objects."""
    if source in row or "." not in source:
        return row.get(source, MISSING)
    value: Any = row
    for part in source.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def _reads(row: Mapping[str, Any], source: str, name: str) -> bool:
    """Whether a pair reading `source` from `row` reads the field `name` (itself or a path into it)."""
    return source == name or (source not in row and "." in source and source.split(".")[0] == name)


def _value(field: str, leaves: frozenset[str] | None) -> Any:
    """A value no other field or leaf holds: text, or an object with the given leaves."""
    if leaves is None:
        return f"v({field})"
    return {"id": f"v({field})", **{leaf: f"v({field})/{leaf}" for leaf in sorted(leaves)}}


@st.composite
def _rows(draw: Any, fields: st.SearchStrategy[list[str]] | None = None) -> tuple[tuple[str, ...], dict[str, Any]]:
    names = tuple(draw(fields or st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True)))
    leaves = st.none() | st.frozensets(st.sampled_from(("x", "y")))
    return names, {f: _value(f, draw(leaves)) for f in names}


@st.composite
def _mappers(draw: Any) -> dict[str, Any]:
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(SOURCES), st.sampled_from(NEW)), min_size=1, max_size=5, unique_by=lambda p: p[0]
        )
    )
    return {"mapping": dict(pairs), "select_only": draw(st.booleans()), "strict": draw(st.booleans())}


def _flat(row: Mapping[str, Any]) -> dict[str, Any]:
    """`row` with no object in it: a row on which no dotted source finds anything."""
    return {f: (v["id"] if isinstance(v, dict) else v) for f, v in row.items()}


def _steps(options: dict[str, Any], row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row as it is before each pair and after the last (the pairs run one after another)."""
    pairs = list(options["mapping"].items())
    made = [FieldMapper({"mapping": dict(pairs[: i + 1])}).process(row) for i in range(len(pairs))]
    return [dict(row), *made]


def _later_pair(message: str, mapping: dict[str, str]) -> str:
    match = re.search(r"the later pair '(.+?): [^:']+'", message)
    assert match is not None and match.group(1) in mapping, message
    return match.group(1)


def _check_claims(
    options: dict[str, Any], fields: tuple[str, ...], row: dict[str, Any], certain: frozenset[str] | None = None
) -> None:
    """Every problem `field_problems` reports happens to `row` (one that may hold `fields` and holds
    `certain`, by default all of them)."""
    certain = frozenset(fields) if certain is None else certain
    mapper = FieldMapper(options)
    problems = mapper.field_problems(fields, certain)
    if not problems:
        return
    try:
        out = mapper.process(row)
    except RowError:
        return  # (`strict`: the row fails, nothing of it goes on)
    mapping: dict[str, str] = options["mapping"]
    olds = list(mapping)
    steps = None if options["select_only"] else _steps(options, row)
    case = f"fields {fields}, options {options}, row {row} -> {out}"
    for key, message in problems.items():
        old = key.removeprefix("mapping.")
        i = olds.index(old)
        new = mapping[old]
        if message.startswith("reads "):
            assert steps is not None, f"{case}: {key}: {message}"
            assert list(steps[i + 1].items()) == list(steps[i].items()), f"{case}: the pair changed the row: {message}"
        elif message.startswith("renames "):
            assert steps is not None, f"{case}: {key}: {message}"
            later = _later_pair(message, mapping)
            assert new in steps[i], f"{case}: the row does not hold '{new}' there: {message}"
            own = steps[i][new]
            assert own not in out.values(), f"{case}: '{new}''s value is not lost: {message}"
            j = olds.index(later)
            assert _reads(steps[j], later, new), f"{case}: '{later}' does not read '{new}': {message}"
        elif message.startswith("writes "):
            later = _later_pair(message, mapping)
            if steps is None:  # select_only: each pair reads the input
                value, theirs = _lookup(row, old), _lookup(row, later)
                after = out
            else:
                value, theirs = _lookup(steps[i], old), _lookup(steps[olds.index(later)], later)
                after = steps[olds.index(later) + 1]
            if value is not MISSING and theirs != value:  # (overwritten by an equal value: not to be seen)
                assert after.get(new, MISSING) != value, f"{case}: '{later}' leaves this pair's value: {message}"
        else:
            pytest.fail(f"{case}: a problem of a kind not checked here: {key}: {message}")


@settings(max_examples=1500)
@given(_rows(), _mappers())
# Found by this test, each refused by `elspeth validate` though it works: `n: n` moves a's value to
# the end of the row, it does not overwrite it;
@example((("a",), {"a": "v(a)"}), {"mapping": {"a": "n", "n": "n"}, "select_only": False, "strict": False})
# m is made only where c holds an x, so a's value lands on every other row;
@example(
    (("a", "c"), {"a": "v(a)", "c": "v(c)"}),
    {"mapping": {"c.x": "m", "a": "n", "m": "n"}, "select_only": False, "strict": False},
)
# the pair `a.x: tmp` reads the field named 'a.x', not a path into 'a'.
@example(
    (("b", "a.x", "a"), {"b": "v(b)", "a.x": "v(a.x)", "a": "v(a)"}),
    {"mapping": {"b": "a", "a.x": "tmp"}, "select_only": False, "strict": False},
)
def test_each_problem_field_mapper_reports_happens(
    case: tuple[tuple[str, ...], dict[str, Any]], options: dict[str, Any]
) -> None:
    fields, row = case
    _check_claims(options, fields, row)


@settings(max_examples=1500)
@given(_rows(), _mappers(), _mappers())
# Found by this test: m, tmp are made only where a dotted source finds something (each refused).
@example(
    (("a", "c"), {"a": "v(a)", "c": "v(c)"}),
    {"mapping": {"c.x": "m"}},
    {"mapping": {"a": "n", "m": "n"}, "select_only": False, "strict": False},
)
@example(
    (("b", "d"), {"b": "v(b)", "d": "v(d)"}),
    {"mapping": {"b.x": "tmp"}},
    {"mapping": {"d": "tmp", "tmp": "a"}, "select_only": False, "strict": False},
)
def test_each_problem_reported_behind_another_field_mapper_happens(
    case: tuple[tuple[str, ...], dict[str, Any]], first: dict[str, Any], options: dict[str, Any]
) -> None:
    """As `elspeth validate` asks it: with the fields the first mapper says its rows hold."""
    fields, row = case
    try:
        row = FieldMapper(first).process(row)
    except RowError:
        return
    before = FieldMapper(first)  # (as `elspeth validate` follows the rows through it)
    _check_claims(options, before.output_fields(fields), row, before.certain_fields(fields, frozenset(fields)))


@settings(max_examples=1500)
@given(_rows(), _mappers())
# Found by this test: validate passes it, and a's value never lands (each pair reads the input).
@example(
    (("a", "b", "n"), {"a": "v(a)", "b": "v(b)", "n": "v(n)"}),
    {"mapping": {"a": "n", "n": "m", "b": "n"}, "select_only": True, "strict": False},
)
def test_a_field_mapper_loses_no_value_unreported_but_by_design(
    case: tuple[tuple[str, ...], dict[str, Any]], options: dict[str, Any]
) -> None:
    """A value is lost only where a pair overwrites it. By design: a field of the row renamed onto
    that no later pair reads; a value overwritten from a source not every row holds (whichever
    exists); without select_only. Otherwise the pair whose value is lost (or, for the row's own
    field, the renaming pair) is reported."""
    fields, row = case
    mapper = FieldMapper({**options, "strict": False})
    # (A pair that names a field the rows do not hold is refused all the same, by `named_fields`.)
    assume(all(name in fields or name.split(".")[0] in fields for name in mapper.named_fields))
    problems = mapper.field_problems(fields, frozenset(fields))
    mapping: dict[str, str] = options["mapping"]
    pairs = list(mapping.items())
    case_ = f"fields {fields}, options {options}, row {row} -> {mapper.process(row)}, problems {problems}"
    if options["select_only"]:
        flat = _flat(row)
        for i, (old, new) in enumerate(pairs):
            if _lookup(row, old) is MISSING:
                continue
            over = [o for o, n in pairs[i + 1 :] if n == new and _lookup(flat, o) is not MISSING]
            if over:
                assert f"mapping.{old}" in problems, f"{case_}: '{old}: {new}' is always overwritten by '{over[-1]}'"
        return
    steps, flat_steps = _steps(options, row), _steps(options, _flat(row))
    for i, (old, new) in enumerate(pairs):
        before, after = steps[i], steps[i + 1]
        if new not in before or new == old or (lost := before[new]) in after.values():
            continue
        if old not in flat_steps[i]:
            continue  # from a source not every row holds: whichever exists
        writers = [k for k in range(i) if steps[k + 1].get(new, MISSING) == lost != steps[k].get(new, MISSING)]
        if writers:
            writer = pairs[writers[-1]][0]
            assert f"mapping.{writer}" in problems, f"{case_}: '{writer}: {new}' is overwritten by '{old}: {new}'"
        elif any(_reads(steps[j], o, new) for j, (o, _) in enumerate(pairs) if j > i):
            assert f"mapping.{old}" in problems, f"{case_}: '{old}: {new}' loses the row's '{new}', read later"


@st.composite
def _explodes(draw: Any) -> tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]:
    fields = tuple(draw(st.lists(st.sampled_from((*POOL, "item", "item_index")), min_size=1, max_size=4, unique=True)))
    options = {
        "array_field": draw(st.sampled_from(fields)),
        "output_field": draw(st.sampled_from((*POOL, "item", "item_index"))),
        "include_index": draw(st.booleans()),
    }
    row = {f: [f"v({f})/0", f"v({f})/1"] if f == options["array_field"] else f"v({f})" for f in fields}
    return fields, options, row


@settings(max_examples=1000)
@given(_explodes())
def test_json_explode_fails_every_row_exactly_where_field_problems_says(
    case: tuple[tuple[str, ...], dict[str, Any], dict[str, Any]],
) -> None:
    fields, options, row = case
    try:
        explode = JsonExplode(options)
    except PluginConfigError:
        return
    problems = explode.field_problems(fields, frozenset(fields))
    try:
        out = explode.process(row)
    except RowError as e:
        assert problems, f"{fields}, {options}: the row fails ({e}), unreported"
        return
    assert not problems, f"{fields}, {options}: {problems}, but the row makes {out}"
    for made in out:
        assert tuple(made) == explode.output_fields(fields), f"{fields}, {options}: {made}"


@settings(max_examples=1500)
@given(_rows(), _mappers(), st.sampled_from(NEW), st.booleans())
# b is made only where a holds an x: other rows explode (found by this test; refused).
@example((("a",), {"a": "v(a)"}), {"mapping": {"a.x": "b"}}, "b", False)
def test_json_explode_behind_a_field_mapper_fails_every_row_where_field_problems_says(
    case: tuple[tuple[str, ...], dict[str, Any]], first: dict[str, Any], output_field: str, include_index: bool
) -> None:
    """As `elspeth validate` asks it: with the fields the mapper says its rows hold."""
    fields, row = case
    fields, row = (*fields, "items"), {**row, "items": ["e0", "e1"]}
    mapper = FieldMapper(first)
    try:
        mapped = mapper.process(row)
    except RowError:
        return
    explode = JsonExplode({"array_field": "items", "output_field": output_field, "include_index": include_index})
    shape, certain = mapper.output_fields(fields), mapper.certain_fields(fields, frozenset(fields))
    if "items" not in shape or explode.field_problems(shape, certain) == {}:
        return
    with pytest.raises(RowError):
        explode.process(mapped)


@settings(max_examples=1500)
@given(_rows(), _mappers())
def test_field_mapper_output_fields_hold_what_process_leaves(
    case: tuple[tuple[str, ...], dict[str, Any]], options: dict[str, Any]
) -> None:
    """(Their order is that of a row every dotted source finds something in: one that finds
    nothing may have a field made later in its place.)"""
    fields, row = case
    mapper = FieldMapper(options)
    try:
        out = mapper.process(row)
    except RowError:
        return
    said = mapper.output_fields(fields)
    assert set(out) <= set(said), f"{fields}, {options}, {row}: {out} but {said}"


@settings(max_examples=1500)
@given(_rows(), _mappers())
def test_field_mapper_certain_fields_are_held_by_every_row_it_makes(
    case: tuple[tuple[str, ...], dict[str, Any]], options: dict[str, Any]
) -> None:
    """What `elspeth validate` takes every row to hold after it (a json_explode's output_field
    there, a later pair's source, is refused only then): on a row holding every field, objects
    reached into or not."""
    fields, row = case
    mapper = FieldMapper(options)
    certain = mapper.certain_fields(fields, frozenset(fields))
    for given_row in (row, _flat(row)):
        try:
            out = mapper.process(given_row)
        except RowError:
            continue
        assert certain <= set(out), f"{fields}, {options}, {given_row}: {out} lacks {certain - set(out)}"
