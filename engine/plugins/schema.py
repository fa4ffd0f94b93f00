"""`options.schema`: which fields a row has and of what types; coercion at the source; CSV
header normalisation."""

from __future__ import annotations

import keyword
import math
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from engine.errors import EngineError
from engine.plugins.protocol import PluginConfigError, SourceItem
from engine.plugins.reasons import described, fields_named

MODES = ("fixed", "flexible", "observed")
TYPES = ("str", "int", "float", "bool", "any")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
# Plain decimal integers only: int() alone would also take '1_000', and '12.0' is not an int;
# ASCII digits only (`\d` and int() take any script's: full-width 123 would be read as 123).
_INT = re.compile(r"[+-]?[0-9]+")


def is_int_text(text: str) -> bool:
    """Whether text (surrounding spaces aside) is a plain decimal integer: the one rule for
    schema fields, plugin options and settings values given as text (e.g. an expanded ${N})."""
    return _INT.fullmatch(text.strip()) is not None


# Each way to spell a digit run is unambiguous (`[0-9]+(\.[0-9]*)?`, not `[0-9]+\.?[0-9]*`): a long
# run of digits that fails at its end then backtracks in linear time, not quadratic (a hostile
# review's 40,000-digit cell took 29 s to refuse; 300 KB, about 25 minutes).
_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def reads_as_number(text: str) -> bool:
    """Whether text reads as a finite number (an int or a float field would take it)."""
    return _FLOAT.fullmatch(text.strip()) is not None and text.strip().lower().lstrip("+-")[:3] not in ("nan", "inf")


class SchemaViolation(EngineError):
    """A row that does not fit the schema; `reason` is recorded with the quarantined row."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str  # one of TYPES
    optional: bool


@dataclass(frozen=True, slots=True)
class Schema:
    mode: str  # one of MODES
    fields: tuple[Field, ...] = ()
    # Each declared field's converter, by name (`coerce`'s fast path); none in observed mode.
    _converters: dict[str, Callable[[Any], Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        converters = {} if self.mode == "observed" else {f.name: _CONVERTERS[f.type] for f in self.fields}
        object.__setattr__(self, "_converters", converters)

    @property
    def field_names(self) -> list[str] | None:
        """The declared fields in order, or None when the schema does not name any (observed)."""
        if self.mode == "observed" or not self.fields:
            return None
        return [f.name for f in self.fields]

    def coerce(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A new row with the declared fields converted to their types, in the row's own field
        order (absent optional fields last, as None). Raises SchemaViolation."""
        if self.mode == "observed":
            return dict(row)
        # The common row first, in one pass: exactly the declared fields (so none is missing nor
        # extra), each a non-empty text its type reads. Anything else, on the way that says why
        # (which then also finds the first problem in the schema's order): the same result.
        # Only a plain dict: a Mapping may repeat a name (a multi-dict: as many pairs as fields,
        # yet a field missing), a dict subclass give `row[name]` otherwise than its `items()`.
        converters = self._converters
        if type(row) is dict and len(row) == len(converters):
            out: dict[str, Any] = {}
            for name, value in row.items():
                convert = converters.get(name)
                if convert is None or type(value) is not str or not value:
                    break
                result = convert(value)
                if result is _BAD or type(result) is _Unfit:
                    break
                out[name] = result
            else:
                return out
        return self._coerced(row)

    def _coerced(self, row: Mapping[str, Any]) -> dict[str, Any]:
        declared = {f.name for f in self.fields}
        if self.mode == "fixed":
            extra = [k for k in row if k not in declared]
            if extra:  # their names are the input's, not the settings': row data, given by position
                raise SchemaViolation(
                    f"{len(extra)} field(s) the schema does not declare (schema mode fixed): "
                    f"{fields_named(row, extra, declared)}"
                )
        converted: dict[str, Any] = {}
        for f in self.fields:
            if f.name in row:
                converted[f.name] = _convert(f, row[f.name])
            elif f.optional:
                converted[f.name] = None
            else:
                raise SchemaViolation(f"required field '{f.name}' is missing")
        out = {k: converted[k] if k in declared else v for k, v in row.items()}
        for k, v in converted.items():
            out.setdefault(k, v)
        return out

    def _exempt_from_lock(self) -> frozenset[str]:
        """The fields the type lock never checks: the declared ones, whose types are the schema's
        (in observed mode the lock covers every field, declared or not)."""
        return frozenset() if self.mode == "observed" else frozenset(f.name for f in self.fields)

    def fix_types(self, row: Mapping[str, Any]) -> dict[str, str] | None:
        """The types the first valid row fixes: for every field it carries that the schema does
        not declare, the type of its value. None in fixed mode (no field is undeclared)."""
        if self.mode == "fixed":
            return None
        declared = self._exempt_from_lock()
        return {k: value_type(v) for k, v in row.items() if k not in declared}

    def type_violations(self, fixed: Mapping[str, str], row: Mapping[str, Any]) -> str | None:
        """Why a valid row breaks the types `fixed` by the first valid row, or None. Null and
        absence are always allowed, as is any field the first valid row did not carry."""
        declared = self._exempt_from_lock()
        problems = []
        for position, (name, value) in enumerate(row.items(), 1):
            want = fixed.get(name)
            if name in declared or value is None or want is None or want in _ACCEPT_ANYTHING:
                continue
            found = value_type(value)
            if found != want:  # an undeclared field: its name is the input's, so its position is given
                problems.append(f"field {position} of the row is {found}, but the first valid row fixed it as {want}")
        return "; ".join(problems) or None


OBSERVED = Schema("observed")
# An object or array value fixes no type: any value is accepted afterwards.
_ACCEPT_ANYTHING = frozenset({"object", "array"})


def value_type(value: Any) -> str:
    """The name of a value's type for the type lock: `1` is int and `1.0` is float, `True` is bool
    (not an int), None is null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__  # a third-party source's own value types: compared by name


def type_locked(
    items: Iterator[SourceItem | None], schema: Schema, fixed: Callable[[], Mapping[str, str] | None]
) -> Iterator[SourceItem | None]:
    """A source's records with the type lock of flexible and observed schemas applied.

    `fixed` reads the types fixed so far from the run's fold, i.e. from the log: the first valid
    row comes out with `fixed_types` set, the engine records them with its TokenCreated, and the
    fold holds them from then on, also for a resumed run whose source starts after that row. A
    row breaking them is quarantined with its declared fields coerced (as it passed the schema).
    """
    for item in items:
        # (A fixed schema fixes nothing, see fix_types: skip the lookups for it.)
        if item is None or item.row is None or schema.mode == "fixed":
            yield item
            continue
        locked = fixed()
        if locked is None:
            types = schema.fix_types(item.row)
            yield replace(item, fixed_types=None if types is None else list(types.items()))
            continue
        reason = schema.type_violations(locked, item.row)
        yield item if reason is None else replace(item, row=None, raw=item.row, error=reason)


def _convert(f: Field, value: Any) -> Any:
    if value is None or value == "":
        if f.optional:
            return None
        raise SchemaViolation(f"field '{f.name}' is required ({f.type}) but empty")
    converter = _CONVERTERS[f.type]
    result = converter(value)
    if result is _BAD or isinstance(result, _Unfit):
        # The reason outlives an erasure of the row (docs/erasure.md): the value is in the row's
        # payload, the reason says only what kind of value it is.
        article = "an" if f.type in ("int", "any") else "a"
        why = f" ({result.why})" if isinstance(result, _Unfit) else ""
        raise SchemaViolation(f"field '{f.name}' is not {article} {f.type}: found {described(value)}{why}")
    return result


class _Unfit:
    """A value that reads as the type and still is none (why, naming no part of the value)."""

    def __init__(self, why: str) -> None:
        self.why = why


class RoundedFloat(float):
    """A number whose text a float could not hold whole and that reads as a whole number only for
    that (2.0000000000000001 reads 2.0, 9007199254740993.0 reads ...992.0): a source that reads
    the text marks it so, and an int field refuses it (a hostile review found such a number recorded
    as the int it was rounded to). Made a plain float again before the row goes on (`plain_floats`):
    nothing else tells the two apart, and the audit trail's encoder takes only floats."""

    __slots__ = ()


def plain_floats(value: Any) -> None:
    """Every RoundedFloat in the rows, dicts and lists of `value` made a plain float, in place."""
    stack = [value]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, v in list(pairs):
            if type(v) is RoundedFloat:
                item[key] = float(v)
            elif isinstance(v, dict | list):
                stack.append(v)


_ROUNDED = _Unfit("it reads as a whole number only because a float cannot hold all the digits it is written with")
_INEXACT = _Unfit("it is an integer with more digits than a float holds, which would read as another")
_NOT_FINITE = _Unfit("it reads as NaN or an infinity, for which the audit trail's JSON has no form")
_TOO_LARGE = _Unfit("it reads as a number beyond a float's range, ±1.8e308")
_TOO_SMALL = _Unfit("it reads as a number too close to zero for a float, which would read 0")


_BAD = object()


def _to_str(value: Any) -> Any:
    return value if isinstance(value, str) else _BAD


_EXACT = 2**53  # every integer up to this is a float exactly


# The most digits int() takes whatever its limit is set to (PYTHONINTMAXSTRDIGITS, -X
# int_max_str_digits, sys.set_int_max_str_digits: none may be below this, 640).
_SAFE_DIGITS = sys.int_info.str_digits_check_threshold


def _to_int(value: Any) -> Any:
    # (A plain text of ASCII digits first, the common cell: below the digits int() takes.)
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= _SAFE_DIGITS:
        return int(value)
    if isinstance(value, bool):
        return _BAD  # bool is an int subclass in Python, not in a schema
    if isinstance(value, int):
        return value
    if type(value) is RoundedFloat:
        return _ROUNDED
    if isinstance(value, float):
        # Past 2**53 a float has lost digits already (12345678901234567890.0 reads as
        # ...7168): which int the row meant cannot be told, so it is not one.
        return int(value) if math.isfinite(value) and value.is_integer() and abs(value) <= _EXACT else _BAD
    if isinstance(value, str) and is_int_text(value):
        text = value.strip()
        sign = text[0] if text[0] in "+-" else ""
        try:  # (leading zeros are no digits of the number: int() would count them)
            return int(sign + (text.removeprefix(sign).lstrip("0") or "0"))
        except ValueError:  # more digits than Python converts (4,300): not an int a row can hold
            return _BAD
    return _BAD


def _to_float(value: Any) -> Any:
    if isinstance(value, bool):
        return _BAD
    # Only finite numbers: NaN and Infinity have no JSON form, so the row recorded in the audit
    # trail (null) and the row a sink writes would differ, and so would a run and its resume.
    try:
        if isinstance(value, int | float):
            number = float(value)
            if isinstance(value, int) and math.isfinite(number) and int(number) != value:
                return _INEXACT  # (9007199254740993 reads ...992.0)
        elif isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            number = float(value.strip())
            # (Decimal, not int: leading zeros may take the text past int()'s 4,300 digits)
            if is_int_text(value) and math.isfinite(number) and Decimal(value.strip()) != int(number):
                return _INEXACT
            if number == 0.0 and any(c in "123456789" for c in value.lower().partition("e")[0]):
                return _TOO_SMALL  # (1e-400 would read 0), as the JSON source says
            if not math.isfinite(number) and "n" not in value.lower():  # (no nan, inf or infinity)
                return _TOO_LARGE  # 1.0e400
        else:
            return _BAD
    except OverflowError:  # an integer of hundreds of digits
        return _TOO_LARGE
    return number if math.isfinite(number) else _NOT_FINITE


def _to_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return _BAD


def _to_any(value: Any) -> Any:
    return value


_CONVERTERS = {"str": _to_str, "int": _to_int, "float": _to_float, "bool": _to_bool, "any": _to_any}


def parse_schema(raw: Any) -> Schema:
    """`options.schema` -> Schema (observed when absent). PluginConfigError paths start at
    `schema`."""
    if raw is None:
        return OBSERVED
    if not isinstance(raw, Mapping):
        raise PluginConfigError("schema", f"expected a mapping with mode and fields, found {raw!r}")
    unknown = [k for k in raw if k not in ("mode", "fields")]
    if unknown:
        raise PluginConfigError(f"schema.{unknown[0]}", "unknown key; allowed: mode, fields")
    if "mode" not in raw and raw.get("fields"):
        # Observed, the default, uses none of them (no check, no sink header or columns): fields
        # written down to be used would silently not be.
        raise PluginConfigError(
            "schema.mode",
            "required when fields are given (observed, the default, does not use them); allowed: fixed (exactly "
            "these fields), flexible (at least these), observed (whatever arrives: the fields are not used)",
        )
    mode = raw.get("mode", "observed")
    if mode not in MODES:
        raise PluginConfigError("schema.mode", f"{mode!r} is not allowed; allowed: {', '.join(MODES)}")
    fields_raw = raw.get("fields")
    if fields_raw is None:
        fields_raw = []
    if not isinstance(fields_raw, list):
        raise PluginConfigError("schema.fields", f"expected a list of 'name: type', found {fields_raw!r}")
    fields: list[Field] = []
    seen: set[str] = set()
    for i, spec in enumerate(fields_raw):
        where = f"schema.fields[{i}]"
        if not isinstance(spec, str) or ":" not in spec:
            raise PluginConfigError(where, f"{spec!r} is not 'name: type'")
        name, _, type_ = (p.strip() for p in spec.partition(":"))
        optional = type_.endswith("?")
        type_ = type_.removesuffix("?").strip()
        if not name:
            raise PluginConfigError(where, f"{spec!r} has no field name")
        if type_ not in TYPES:
            raise PluginConfigError(where, f"type {type_!r} is not allowed; allowed: {', '.join(TYPES)}")
        if name in seen:
            raise PluginConfigError(where, f"field {name!r} is declared twice")
        seen.add(name)
        fields.append(Field(name, type_, optional))
    if mode != "observed" and not fields:
        raise PluginConfigError("schema.fields", f"required for mode {mode}")
    if mode == "observed" and fields:  # (as when mode is left out: see above)
        raise PluginConfigError(
            "schema.fields",
            "given with mode observed, which does not use them (no check, no sink header or columns); allowed: "
            "mode fixed (exactly these fields) or flexible (at least these), or no fields",
        )
    return Schema(mode, tuple(fields))


def normalise_header(raw: str) -> str:
    """One CSV header as an identifier: `Amount ($)` -> `amount`, `Notes / Comments` ->
    `notes_comments`. PluginConfigError when nothing is left."""
    text = unicodedata.normalize("NFC", raw).strip().lower()
    text = re.sub(r"\W+", "_", text)
    text = re.sub(r"_+", "_", text).strip("_")
    if not text:
        shown = repr(raw) if len(raw) <= 60 else f"{raw[:40]!r}… ({len(raw)} characters)"
        raise PluginConfigError("", f"the header {shown} normalises to an empty name")
    if text[0].isdigit():
        text = "_" + text
    if keyword.iskeyword(text):
        text += "_"
    return text


def normalise_headers(raw: Sequence[str]) -> list[str]:
    """A CSV header row normalised; PluginConfigError for an empty result or two headers that
    normalise to the same name."""
    names = []
    for i, h in enumerate(raw):
        try:
            names.append(normalise_header(h))
        except PluginConfigError as e:
            # (which column, and what to do: an empty last one is a trailing delimiter, as Excel writes)
            trailing = " (a delimiter at the end of the header line)" if i == len(raw) - 1 and not h.strip() else ""
            raise PluginConfigError(
                "", f"column {i + 1} of {len(raw)}{trailing}: {e.message}; allowed: a header naming every column "
                "with a letter or digit, or `columns` in the options to name them"
            ) from None  # fmt: skip
    first: dict[str, str] = {}
    for original, name in zip(raw, names, strict=True):
        if name in first:
            raise PluginConfigError("", f"the headers {first[name]!r} and {original!r} both normalise to {name!r}")
        first[name] = original
    return names
