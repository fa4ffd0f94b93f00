"""Transforms: each documented behaviour, bad options, row errors, and inputs left untouched."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.plugins.protocol import PluginConfigError, RowError
from engine.plugins.registry import build_plugin

CORPUS = Path(__file__).resolve().parent / "corpus"  # the prior system's conformance corpus (see its README)


def run(name: str, options: dict[str, Any], row: dict[str, Any]) -> Any:
    """The transform's output; also checks that the input row was not changed."""
    before = copy.deepcopy(row)
    out = build_plugin("transform", name, options).process(row)
    assert row == before
    return out


def test_passthrough() -> None:
    row = {"a": 1}
    out = run("passthrough", {"required_input_fields": ["a"]}, row)
    assert out == row and out is not row
    with pytest.raises(RowError, match="missing: b"):
        run("passthrough", {"required_input_fields": ["a", "b"]}, row)


# field_mapper: field order is part of the output (SETTINGS.md, Schemas)


def test_field_mapper_appends_a_renamed_field_at_the_end() -> None:
    out = run("field_mapper", {"mapping": {"b": "beta"}}, {"a": 1, "b": 2, "c": 3})
    assert list(out.items()) == [("a", 1), ("c", 3), ("beta", 2)]
    # several renames: appended one after another, in the order of `mapping`
    out = run("field_mapper", {"mapping": {"c": "x", "a": "y"}}, {"a": 1, "b": 2, "c": 3})
    assert list(out.items()) == [("b", 2), ("x", 3), ("y", 1)]


def test_field_mapper_renaming_onto_an_existing_field_overwrites_it_in_place() -> None:
    out = run("field_mapper", {"mapping": {"a": "b"}}, {"b": 2, "x": 0, "a": 1})
    assert list(out.items()) == [("b", 1), ("x", 0)]


def test_field_mapper_missing_fields_are_ignored_unless_strict() -> None:
    assert run("field_mapper", {"mapping": {"x": "y"}}, {"a": 1}) == {"a": 1}
    with pytest.raises(RowError, match="missing: x"):
        run("field_mapper", {"mapping": {"x": "y"}, "strict": True}, {"a": 1})


def test_field_mapper_select_only_keeps_mapping_order() -> None:
    options = {"mapping": {"product": "product_name", "id": "item_id", "gone": "g"}, "select_only": True}
    out = run("field_mapper", options, {"id": 1, "product": "P", "price": 3})
    assert list(out.items()) == [("product_name", "P"), ("item_id", 1)]


def test_field_mapper_copies_a_dotted_source_and_appends_its_target() -> None:
    row = {"id": 1, "customer": {"name": "Ann", "address": {"city": "Oslo"}}, "z": 0}
    out = run("field_mapper", {"mapping": {"customer.address.city": "city", "customer.name": "name"}}, row)
    assert list(out.items()) == [*row.items(), ("city", "Oslo"), ("name", "Ann")]  # the source stays
    # onto an existing field: in place
    out = run("field_mapper", {"mapping": {"customer.name": "id"}}, row)
    assert list(out) == ["id", "customer", "z"] and out["id"] == "Ann"
    # with select_only, in the order of mapping
    out = run("field_mapper", {"mapping": {"z": "zz", "customer.name": "name"}, "select_only": True}, row)
    assert list(out.items()) == [("zz", 0), ("name", "Ann")]
    # a path that is not there is a missing field
    assert run("field_mapper", {"mapping": {"customer.phone": "p", "id.x": "q"}}, row) == row
    with pytest.raises(RowError, match=r"missing: customer\.phone"):
        run("field_mapper", {"mapping": {"customer.phone": "p"}, "strict": True}, row)


def test_field_mapper_a_field_whose_name_has_a_dot_is_a_field() -> None:
    out = run("field_mapper", {"mapping": {"a.b": "ab"}}, {"a.b": 1, "c": 2})
    assert list(out.items()) == [("c", 2), ("ab", 1)]


def test_truncate_cuts_to_the_maximum_including_the_suffix() -> None:
    options = {"fields": {"notes": 10}, "suffix": "..."}
    assert run("truncate", options, {"notes": "abcdefghijKLM"}) == {"notes": "abcdefg..."}
    assert run("truncate", options, {"notes": "abcdefghij"}) == {"notes": "abcdefghij"}
    assert run("truncate", {"fields": {"notes": 4}}, {"notes": "abcdef", "n": 1}) == {"notes": "abcd", "n": 1}
    assert run("truncate", options, {"other": 1}) == {"other": 1}
    assert run("truncate", options, {"notes": 12345678901}) == {"notes": 12345678901}  # only strings
    with pytest.raises(RowError, match="'notes' is missing"):
        run("truncate", {**options, "strict": True}, {"other": 1})


def test_keyword_filter() -> None:
    options = {"fields": ["notes"], "blocked_patterns": [r"(?i)\bsecret\b"]}
    assert run("keyword_filter", options, {"notes": "fine", "title": "secret"}) == {"notes": "fine", "title": "secret"}
    with pytest.raises(RowError) as err:
        run("keyword_filter", options, {"notes": "a SECRET plan"})
    assert "notes" in err.value.reason and r"(?i)\bsecret\b" in err.value.reason
    with pytest.raises(RowError, match=r"^field 2 of the row matches"):  # `all`: the name is the input's
        run("keyword_filter", {**options, "fields": "all"}, {"notes": "fine", "title": "secret"})
    # a field it is to screen and cannot see: not passed (a misspelt name let every row through)
    with pytest.raises(RowError, match=r"^field 'notes' is missing: there is nothing to screen it in$"):
        run("keyword_filter", options, {"customer_notes": "a secret plan"})
    assert run("keyword_filter", options, {"notes": None}) == {"notes": None}  # present, nothing to match
    # a screen of no field passed every row as screened (a hostile review)
    with pytest.raises(PluginConfigError, match="an empty list screens nothing; allowed: field names, or 'all'"):
        run("keyword_filter", {**options, "fields": []}, {"notes": "a secret plan"})


def test_keyword_filter_screens_the_strings_inside_lists_and_objects() -> None:
    """A JSON source's list or object passed unscreened (a hostile review): each string inside,
    keys too, however deep, is screened; a number by its decimal text; a boolean holds none."""
    options = {"fields": ["notes"], "blocked_patterns": [r"(?i)\bsecret\b"]}
    for value in (["Secret pricing"], {"x": "the secret is"}, {"secret": 1}, [[[{"a": ["ok", "SECRET"]}]]]):
        with pytest.raises(RowError, match=r"^field 'notes' matches blocked pattern"):
            run("keyword_filter", options, {"notes": value})
    assert run("keyword_filter", options, {"notes": [1, 2.5, True, None, {"k": "fine"}]})
    # A card number read as an int passed a screen for card numbers (a careless user's review).
    cards = {"fields": ["card"], "blocked_patterns": [r"^4\d{15}$", r"^1\.5$"]}
    for value in (4111111111111111, [4111111111111111], {"n": 1.5}, 1.5):
        with pytest.raises(RowError, match=r"^field 'card' matches blocked pattern"):
            run("keyword_filter", cards, {"card": value})
    assert run("keyword_filter", cards, {"card": 41111111111111112}) == {"card": 41111111111111112}
    # A row's own field names are not screened, with `all` either: a CSV header's name is every
    # row's (a screen for 'password' would divert each row of a file with password_changed).
    assert run("keyword_filter", {**options, "fields": "all"}, {"id": 1, "the Secret one": "x"})
    deep: object = "secret"
    for _ in range(5000):  # deeper than the interpreter recurses
        deep = [deep]
    with pytest.raises(RowError, match=r"^field 'notes' matches blocked pattern"):
        build_plugin("transform", "keyword_filter", options).process({"notes": deep})


def test_keyword_filter_names_the_first_listed_pattern_that_matches_with_its_own_flags() -> None:
    options = {"fields": ["notes"], "blocked_patterns": ["(?i)plan", "secret", "^a"]}
    with pytest.raises(RowError) as err:  # the 2nd and 3rd match; the 1st, case-sensitive here, not
        run("keyword_filter", {**options, "blocked_patterns": ["PLAN", "secret", "^a"]}, {"notes": "a secret plan"})
    assert err.value.reason.endswith("/secret/")
    with pytest.raises(RowError) as err:
        run("keyword_filter", options, {"notes": "a secret PLAN"})
    assert err.value.reason.endswith("/(?i)plan/")
    assert run("keyword_filter", options, {"notes": "ünïcode, no Secrets"}) == {"notes": "ünïcode, no Secrets"}
    with pytest.raises(RowError, match="/secret/"):
        run("keyword_filter", options, {"notes": "ünïcode secret"})


def test_json_explode() -> None:
    row = {"id": 1, "items": [{"s": "a"}, {"s": "b"}], "z": 0}
    assert run("json_explode", {"array_field": "items"}, row) == [
        {"id": 1, "z": 0, "item": {"s": "a"}, "item_index": 0},
        {"id": 1, "z": 0, "item": {"s": "b"}, "item_index": 1},
    ]
    out = run("json_explode", {"array_field": "items", "output_field": "x", "include_index": False}, row)
    assert out == [{"id": 1, "z": 0, "x": {"s": "a"}}, {"id": 1, "z": 0, "x": {"s": "b"}}]
    named = run("json_explode", {"array_field": "items", "output_field": "x"}, row)
    assert [r["item_index"] for r in named] == [0, 1]  # the index field keeps its name
    for bad, match in (({"items": []}, "empty"), ({"items": "x"}, "not an array"), ({}, "missing")):
        with pytest.raises(RowError, match=match):
            run("json_explode", {"array_field": "items"}, bad)
    # the index's field would overwrite the element: refused, unless there is no index
    with pytest.raises(PluginConfigError, match="'item_index' is where include_index puts") as err:
        build_plugin("transform", "json_explode", {"array_field": "items", "output_field": "item_index"})
    assert err.value.path == "output_field"
    alone = {"array_field": "items", "output_field": "item_index", "include_index": False}
    assert run("json_explode", alone, row)[1] == {"id": 1, "z": 0, "item_index": {"s": "b"}}
    # A field of the row under either name was overwritten in every output row, without a word (a review).
    with pytest.raises(RowError, match="the row has a field 'id' already, which each element would overwrite"):
        run("json_explode", {"array_field": "items", "output_field": "id"}, row)
    # A row's own item_index is replaced (the prior system's; a nested array exploded twice has one).
    assert run("json_explode", {"array_field": "items"}, {**row, "item_index": 99})[1]["item_index"] == 1
    assert run("json_explode", {"array_field": "items", "include_index": False}, {**row, "item_index": 9})[0] == {
        "id": 1, "z": 0, "item_index": 9, "item": {"s": "a"}
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "options", "path"),
    [
        ("field_mapper", {}, "mapping"),
        ("field_mapper", {"mapping": {"a": 1}}, "mapping.a"),
        ("field_mapper", {"mapping": {"a": "b"}, "strict": "yes"}, "strict"),
        ("truncate", {"fields": {"a": 0}}, "fields.a"),
        ("truncate", {"fields": {"a": 2}, "suffix": "..."}, "fields.a"),
        ("truncate", {"fields": {"a": 2}, "sufix": "."}, "sufix"),
        ("keyword_filter", {"blocked_patterns": ["x"]}, "fields"),
        ("keyword_filter", {"fields": "all", "blocked_patterns": ["("]}, "blocked_patterns[0]"),
        ("keyword_filter", {"fields": "all", "blocked_patterns": []}, "blocked_patterns"),
        ("json_explode", {}, "array_field"),
        ("passthrough", {"schema": {"mode": "nope"}}, "schema.mode"),
    ],
)
def test_bad_transform_options(name: str, options: dict[str, Any], path: str) -> None:
    with pytest.raises(PluginConfigError) as err:
        build_plugin("transform", name, options)
    assert err.value.path == path


@pytest.mark.parametrize(
    ("name", "options_yaml", "path", "found"),
    [
        # YAML reads 0123 as 83, no as False and an empty item as null: once compiled as /83/,
        # /False/ and /None/ without a word; a list became a character class.
        ("keyword_filter", "{fields: all, blocked_patterns: ['ok', 0123]}", "blocked_patterns[1]", "an integer (83)"),
        ("keyword_filter", "{fields: all, blocked_patterns: [no]}", "blocked_patterns[0]", "a boolean (False)"),
        ("keyword_filter", "{fields: all, blocked_patterns: ['ok', ~]}", "blocked_patterns[1]", "nothing"),
        ("keyword_filter", "{fields: all, blocked_patterns: [[a]]}", "blocked_patterns[0]", "a list"),
        ("keyword_filter", "{fields: [a, yes], blocked_patterns: [x]}", "fields[1]", "a boolean (True)"),
        ("passthrough", "{required_input_fields: [a, 0123]}", "required_input_fields[1]", "an integer (83)"),
        ("field_mapper", "{mapping: {a: 0123}}", "mapping.a", "an integer (83)"),
    ],
)
def test_names_and_patterns_are_text_never_what_yaml_made_of_unquoted_words(
    name: str, options_yaml: str, path: str, found: str
) -> None:
    with pytest.raises(PluginConfigError) as err:
        build_plugin("transform", name, yaml.safe_load(options_yaml))
    assert err.value.path == path
    assert err.value.message.startswith(f"found {found}; allowed: ")
    assert "in quotes: YAML reads 0123 as a number, no/yes as booleans, an empty item as null" in err.value.message


def test_unknown_plugin_names_the_known_ones() -> None:
    with pytest.raises(PluginConfigError, match="known: field_mapper, json_explode"):
        build_plugin("transform", "nope", {})


def test_json_explode_example() -> None:
    rows = json.loads((CORPUS / "examples/json_explode/input.json").read_text())
    t = build_plugin("transform", "json_explode", {"array_field": "items", "output_field": "item"})
    out = [r for row in rows for r in t.process(row)]
    assert out == json.loads((CORPUS / "expected/examples/json_explode/output/order_items.json").read_text())


_NAMES = st.sampled_from(["a", "b", "a.x", "item", "item_index"])
_VALUES = st.one_of(st.lists(st.integers(), min_size=1, max_size=2), st.fixed_dictionaries({"x": st.none()}))


@st.composite
def _transform_and_rows(draw: st.DrawFn) -> tuple[Any, tuple[str, ...], list[dict[str, Any]]]:
    name, options = draw(
        st.one_of(
            st.tuples(st.just("passthrough"), st.just({})),
            st.tuples(
                st.just("truncate"), st.fixed_dictionaries({"fields": st.dictionaries(_NAMES, st.integers(1, 3))})
            ),
            st.tuples(st.just("keyword_filter"), st.just({"fields": "all", "blocked_patterns": ["zz"]})),
            st.tuples(
                st.just("field_mapper"),
                st.fixed_dictionaries(
                    {"mapping": st.dictionaries(_NAMES, _NAMES, min_size=1, max_size=3), "select_only": st.booleans()}
                ),
            ),
            st.tuples(
                st.just("json_explode"),
                st.fixed_dictionaries(
                    {
                        "array_field": _NAMES,
                        "output_field": st.sampled_from(["item", "out"]),
                        "include_index": st.booleans(),
                    }
                ).filter(lambda o: o["output_field"] != o["array_field"]),
            ),
        )
    )
    fields = tuple(draw(st.lists(_NAMES, unique=True, max_size=4)))
    # Rows holding `fields` (as a fixed schema's rows do), some of them objects and some arrays.
    rows = draw(st.lists(st.fixed_dictionaries(dict.fromkeys(fields, _VALUES)), min_size=1, max_size=4))
    return build_plugin("transform", name, options), fields, rows


@settings(max_examples=400)
@given(_transform_and_rows())
@example(  # a nested value under a name an earlier pair made (a review found it said not to be there)
    (build_plugin("transform", "field_mapper", {"mapping": {"b": "a", "a.x": "item"}}), ("b",), [{"b": {"x": 1}}])
)
@example(  # a nested value copied: the one case the strategy rarely draws
    (build_plugin("transform", "field_mapper", {"mapping": {"a.x": "b"}}), ("a",), [{"a": {"x": None}}])
)
@example(
    (
        build_plugin("transform", "field_mapper", {"mapping": {"a.x": "b"}, "select_only": True}),
        ("a",),
        [{"a": {"x": 1}}],
    )
)
def test_a_transforms_output_fields_hold_every_field_its_rows_come_out_with(
    case: tuple[Any, tuple[str, ...], list[dict[str, Any]]],
) -> None:
    # `output_fields` is what `validate` holds a later step's field names to: a field a row came
    # out with that it does not list would refuse settings that work.
    transform, fields, rows = case
    said = transform.output_fields(fields)
    for row in rows:
        try:
            out = transform.process(row)
        except RowError:
            continue
        for made in out if isinstance(out, list) else [out]:
            assert set(made) <= set(said), (row, made, said)
