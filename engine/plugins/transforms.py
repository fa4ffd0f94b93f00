"""Row transforms. Each returns a new row (never mutates its input) or a list of rows."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import re2

from engine.plugins.options import Options, text_item
from engine.plugins.protocol import PluginConfigError, Row, RowError
from engine.plugins.reasons import field_named
from engine.plugins.schema import parse_schema


class Passthrough:
    kind: ClassVar[str] = "transform"

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "required_input_fields")
        required = o.list_("required_input_fields") or []
        self.required = [
            text_item(name, f"required_input_fields[{i}]", "a field name") for i, name in enumerate(required)
        ]
        self.named_fields = {name: f"required_input_fields[{i}]" for i, name in enumerate(self.required)}
        parse_schema(o.raw("schema"))

    def process(self, row: Row) -> Row:
        missing = [f for f in self.required if f not in row]
        if missing:
            raise RowError(f"required field(s) missing: {', '.join(missing)}")
        return dict(row)

    def output_fields(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        return fields  # (its rows' fields as they came)

    def certain_fields(self, fields: tuple[str, ...], certain: frozenset[str]) -> frozenset[str]:
        return certain


class FieldMapper:
    kind: ClassVar[str] = "transform"

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "mapping", "select_only", "strict")
        # (Keys YAML read as numbers, booleans or null are refused with the settings: they are recorded as text.)
        mapping = o.dict_("mapping", required=True) or {}
        if not mapping:
            raise PluginConfigError("mapping", "required: at least one {old: new} pair")
        for old, new in mapping.items():
            if not text_item(new, f"mapping.{old}", "a field name"):
                raise PluginConfigError(f"mapping.{old}", "found an empty name; allowed: a field name")
        self.mapping: dict[str, str] = mapping
        self.select_only = o.bool_("select_only", False)
        self.strict = o.bool_("strict", False)
        # The fields it reads from its input: without select_only each pair reads the row as the
        # pairs before it left it, so a name an earlier pair made is not the input's.
        made: set[str] = set()
        self.named_fields: dict[str, str] = {}
        for old in mapping:
            if self.select_only or (old not in made and old.split(".")[0] not in made):
                self.named_fields[old] = f"mapping.{old}"
            made.add(mapping[old])
        parse_schema(o.raw("schema"))

    def process(self, row: Row) -> Row:
        # Field order is part of the output (SETTINGS.md, Schemas): the prior system's files have
        # their columns where this puts them, and readers go by position.
        if self.strict:
            missing = [f for f in self.mapping if _lookup(row, f) is _MISSING]
            if missing:
                raise RowError(f"field(s) to map are missing: {', '.join(missing)}")
        if self.select_only:  # the mapped fields alone, in the order of `mapping`
            picked = ((new, _lookup(row, old)) for old, new in self.mapping.items())
            return {new: value for new, value in picked if value is not _MISSING}
        # One pair after another: the old field leaves its place and the value is set under the
        # new name, at the end of the row, or in place when a field is already named so. A dotted
        # (nested) source is copied, its structure left as it is.
        out = dict(row)
        for old, new in self.mapping.items():
            value = out.pop(old, _MISSING) if old in out or "." not in old else _lookup(out, old)
            if value is not _MISSING:
                out[new] = value
        return out

    def output_fields(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        """The fields `process` may leave on a row that can hold only `fields`, in its order."""
        if self.select_only:
            return tuple(dict.fromkeys(new for old, new in self.mapping.items() if _may_hold(fields, old)))
        out = dict.fromkeys(fields)
        for old, new in self.mapping.items():
            if old in out:
                del out[old]
                out[new] = None
            elif "." in old and _may_hold(tuple(out), old):  # a nested value, copied (as the pairs before left the row)
                out[new] = None
        return tuple(out)

    def certain_fields(self, fields: tuple[str, ...], certain: frozenset[str]) -> frozenset[str]:
        """The fields every output row holds, given rows that may hold `fields` and all hold `certain`."""
        return self._walk(fields, certain)[1]

    def field_problems(self, fields: tuple[str, ...], certain: frozenset[str]) -> dict[str, str]:
        return self._walk(fields, certain)[0]

    def _walk(self, fields: tuple[str, ...], certain: frozenset[str]) -> tuple[dict[str, str], frozenset[str]]:
        """The pairs one after another over rows that may hold `fields` and all hold `certain`: the
        fields every output row holds, and the pairs that cannot do what they say there
        (behind a schema of mode fixed, each declared field: an optional one as None), by key
        path (`field_problems`): a nested source inside a field an earlier pair renamed away (each pair reads the row
        as the pairs before it left it, so it never copies anything, with `strict` too, which
        checks the input row); a pair renaming a field every row holds onto another every row
        holds, which a later pair then reads (the row's own value is lost: a swap); and a pair
        whose new name a later pair writes again from a field every row holds (its value is always
        overwritten: "whichever exists" does not hold where both exist). Only what happens to every
        such row is said: a field a nested value was copied into, or that an earlier step may not
        have made, is not certain."""
        problems: dict[str, str] = {}
        out = dict.fromkeys(fields)  # the fields a row may hold, as the pairs before left it
        sure = set(certain)  # those every row holds
        renamed: dict[str, str] = {}  # a field an earlier pair renamed away -> its new name
        writers: dict[str, list[str]] = {}  # a name -> the sources of the pairs whose value may be there
        overwrote: dict[str, str] = {}  # a field every row held that a pair renamed another onto -> its source
        selected: set[str] = set()  # (select_only) the new names a pair every row holds a source of writes
        for old, new in self.mapping.items():
            head = old.split(".")[0]
            before = fields if self.select_only else tuple(out)
            whole = old in before or "." not in old  # a field of that name, not a path into one
            held = old in certain if self.select_only else whole and old in sure
            if not self.select_only and (reads := old if whole else head) in overwrote:
                first = overwrote.pop(reads)
                problems[f"mapping.{first}"] = (
                    f"renames '{first}' onto '{reads}', which every row holds, and the later pair '{old}: {new}' "
                    f"reads '{reads}' as this pair left it: the row's own '{reads}' is lost; allowed: a name between "
                    f"(a swap: {{{first}: tmp, {reads}: {first}, tmp: {reads}}})"
                )
            if not self.select_only and not whole and head not in out and head in renamed:
                problems[f"mapping.{old}"] = (
                    f"reads '{old}' inside '{head}', which the pair '{head}: {renamed[head]}' before it renamed away "
                    f"(each pair reads the row as the pairs before it left it), so it never copies anything; allowed: "
                    f"'{renamed[head]}{old[len(head) :]}', or this pair listed first"
                )
            # (Without select_only `n: n` moves the value an earlier pair wrote to the end of the
            # row; with it, the pair writes the input's `n` over it.)
            if (self.select_only or old != new) and held:
                for earlier in writers.pop(new, []):
                    problems[f"mapping.{earlier}"] = (
                        f"writes '{new}', which the later pair '{old}: {new}' writes again from a field every row "
                        f"reaching it holds (behind the source's schema, mode fixed; an optional field as None), "
                        f"so this pair's value is always overwritten; allowed: another new name"
                    )
            if self.select_only or old != new:  # (`n: n` moves the same value: whoever wrote it still did)
                if not self.select_only and whole:
                    writers.pop(old, None)  # (its value moves on with it)
                writers.setdefault(new, []).append(old)
            if self.select_only:
                selected |= {new} if held else set()
                continue
            if old in out:
                if old != new and old in sure and new in sure:
                    overwrote[new] = old
                now_sure = old in sure or new in sure
                del out[old]
                out[new] = None
                renamed[old] = new
                sure.discard(old)
                if now_sure:
                    sure.add(new)
            elif not whole and _may_hold(tuple(out), old):  # a nested value, copied: where found
                out[new] = None
        return problems, frozenset(selected if self.select_only else sure)


_MISSING = object()


def _may_hold(fields: tuple[str, ...], source: str) -> bool:
    """Whether a row that can hold only `fields` may hold the value a field_mapper source names."""
    return source in fields or source.split(".")[0] in fields


def _lookup(row: Row, source: str) -> Any:
    """The value a field_mapper source names: a field, or with dots a path into nested objects
    (`customer.address.city`); _MISSING when it is not there."""
    if source in row or "." not in source:
        return row.get(source, _MISSING)
    value: Any = row
    for part in source.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


class Truncate:
    kind: ClassVar[str] = "transform"

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "fields", "suffix", "strict")
        fields = o.dict_("fields", required=True) or {}
        for name, limit in fields.items():
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise PluginConfigError(f"fields.{name}", f"expected a positive maximum length, found {limit!r}")
        self.fields: dict[str, int] = dict(fields)
        self.suffix = o.str_("suffix", "")
        self.strict = o.bool_("strict", False)
        for name, limit in self.fields.items():
            if len(self.suffix) > limit:
                raise PluginConfigError(f"fields.{name}", f"maximum length {limit} is shorter than the suffix")
        self.named_fields = {name: f"fields.{name}" for name in self.fields}
        parse_schema(o.raw("schema"))

    def process(self, row: Row) -> Row:
        out = dict(row)
        for name, limit in self.fields.items():
            if name not in row:
                if self.strict:
                    raise RowError(f"field '{name}' is missing")
                continue
            value = row[name]
            if isinstance(value, str) and len(value) > limit:
                out[name] = value[: limit - len(self.suffix)] + self.suffix
        return out

    def output_fields(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        return fields  # (its rows' fields as they came)

    def certain_fields(self, fields: tuple[str, ...], certain: frozenset[str]) -> frozenset[str]:
        return certain


class KeywordFilter:
    kind: ClassVar[str] = "transform"

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "fields", "blocked_patterns")
        fields = o.raw("fields")
        if fields == "all":
            self.fields: list[str] | None = None
        elif isinstance(fields, list) and fields:
            self.fields = [text_item(f, f"fields[{i}]", "a field name") for i, f in enumerate(fields)]
        elif fields == []:  # (every row would pass a screen of nothing, recorded as screened)
            raise PluginConfigError("fields", "an empty list screens nothing; allowed: field names, or 'all'")
        else:
            raise PluginConfigError("fields", f"expected a list of field names or 'all', found {fields!r}")
        patterns = o.list_("blocked_patterns", required=True) or []
        self.patterns: list[Any] = []
        for i, p in enumerate(patterns):
            where = f"blocked_patterns[{i}]"
            self.patterns.append(_compile_pattern(text_item(p, where, "a pattern"), where))
        if not self.patterns:
            raise PluginConfigError("blocked_patterns", "required: at least one regular expression")
        # One pass per value for all patterns, which also says which of them matched: an RE2 set
        # (each pattern keeps its own flags, e.g. `(?i)`), matched against the value's UTF-8.
        self.any = re2.Set.SearchSet(_options())
        for p in self.patterns:
            self.any.Add(p.pattern)
        self.any.Compile()
        self.named_fields = {name: f"fields[{i}]" for i, name in enumerate(self.fields or ())}
        parse_schema(o.raw("schema"))

    def process(self, row: Row) -> Row:
        names = list(row) if self.fields is None else self.fields
        for name in names:
            if name not in row:
                # A screen that cannot see the field it is to screen does not pass the row: a
                # misspelt field, or a header's own spelling ('Customer Notes', where rows hold
                # customer_notes), let every row through unscreened.
                raise RowError(f"field '{name}' is missing: there is nothing to screen it in")
            for text in _texts(row[name]):
                if matched := self.any.Match(text.encode()):
                    pattern = self.patterns[min(matched)]  # the first listed, as the settings name them
                    # With `fields: all` the name is the input's (row data): its position is given.
                    field = field_named(row, name, self.fields or ())
                    raise RowError(f"{field} matches blocked pattern /{pattern.pattern}/")
        return dict(row)

    def output_fields(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        return fields  # (its rows' fields as they came)

    def certain_fields(self, fields: tuple[str, ...], certain: frozenset[str]) -> frozenset[str]:
        return certain


def _texts(value: Any) -> Iterator[str]:
    """The text of a value: a string, a number's decimal text, or that of every one inside a list
    or an object, keys too (a screen that looked at plain strings only let `["Confidential
    pricing"]` through, and a card number read as an int, `4111111111111111`, every time). A
    boolean holds no text to screen. Iterative: a row may be nested as deeply as a source decodes."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, int | float) and not isinstance(v, bool):
            yield str(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
            stack.extend(k for k in v if isinstance(k, str))
        elif isinstance(v, list | tuple):
            stack.extend(v)


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the reason goes into our one-line error, not to stderr
    return options


def _compile_pattern(pattern: str, where: str) -> Any:
    """A pattern compiled by RE2, whose matching time is linear in the text: a backtracking
    engine can spin for good on one value (`^(\\w+\\s?)*$` against `'a' * 34 + '!'`). RE2 has
    no backreferences and no lookaround; such a pattern is refused here, with RE2's reason."""
    try:
        return re2.compile(pattern, _options())
    except re2.error as e:
        reason = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise PluginConfigError(
            where,
            f"the regular expression {pattern!r} cannot be used: {reason}; allowed: RE2 syntax "
            "(no backreferences such as \\1, no lookahead or lookbehind)",
        ) from e


class JsonExplode:
    kind: ClassVar[str] = "transform"
    # It makes several rows of one: refused on a branch a coalesce joins (engine/orchestrator.py),
    # where one row per branch is all that can merge.
    expands: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "array_field", "output_field", "include_index")
        self.array_field = o.str_("array_field", required=True)
        self.output_field = o.str_("output_field", "item")
        self.include_index = o.bool_("include_index", True)
        if self.include_index and self.output_field == "item_index":
            raise PluginConfigError(
                "output_field",
                "'item_index' is where include_index puts each element's index, which would overwrite the element; "
                "allowed: another name, or include_index: false",
            )
        self.named_fields = {self.array_field: "array_field"}
        parse_schema(o.raw("schema"))

    def process(self, row: Row) -> list[Row]:
        if self.array_field not in row:
            raise RowError(f"field '{self.array_field}' is missing")
        items = row[self.array_field]
        if not isinstance(items, list):
            raise RowError(f"field '{self.array_field}' is not an array")
        if not items:
            raise RowError(f"field '{self.array_field}' is an empty array")
        base = {k: v for k, v in row.items() if k != self.array_field}
        # (the row's own field of that name was overwritten in every output row, and gone; a row's
        # item_index is replaced, as the prior system did: a nested array exploded twice has one)
        if self.output_field in base:
            raise RowError(
                f"the row has a field '{self.output_field}' already, which each element would overwrite; allowed: "
                "an output_field the rows do not hold"
            )
        out = []
        for i, item in enumerate(items):
            new = dict(base)
            new[self.output_field] = item
            if self.include_index:
                new["item_index"] = i
            out.append(new)
        return out

    def output_fields(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        index = ["item_index"] if self.include_index else []
        return tuple(dict.fromkeys([*(f for f in fields if f != self.array_field), self.output_field, *index]))

    def certain_fields(self, fields: tuple[str, ...], certain: frozenset[str]) -> frozenset[str]:
        return (certain - {self.array_field}) | {self.output_field} | ({"item_index"} if self.include_index else set())

    def field_problems(self, fields: tuple[str, ...], certain: frozenset[str]) -> dict[str, str]:
        """An `output_field` that every row reaching it holds (`certain`): each such row fails."""
        if self.output_field in certain and self.output_field != self.array_field:
            return {
                "output_field": (
                    f"'{self.output_field}' is a field every row reaching it holds (behind the source's schema, mode "
                    f"fixed), which each element would overwrite, so every row would fail; allowed: a name the rows "
                    f"do not hold ({', '.join(f for f in fields if f in certain)} they do)"
                )
            }
        return {}
