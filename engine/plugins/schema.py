"""`options.schema`: which fields a row has and of what types; coercion at the source."""

from __future__ import annotations

import keyword
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.plugins.protocol import PluginConfigError

_TYPES = ("str", "int", "float", "bool", "any")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


class SchemaViolation(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    optional: bool


@dataclass(frozen=True)
class Schema:
    mode: str  # fixed | flexible | observed
    fields: tuple[Field, ...]

    @property
    def field_names(self) -> list[str] | None:
        if self.mode == "observed" or not self.fields:
            return None
        return [f.name for f in self.fields]

    def coerce(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row with declared fields converted to their types, or SchemaViolation."""
        if self.mode == "observed":
            return dict(row)
        out: dict[str, Any] = {}
        declared = set()
        for f in self.fields:
            declared.add(f.name)
            if f.name not in row:
                if f.optional:
                    out[f.name] = None
                    continue
                raise SchemaViolation(f"required field '{f.name}' is missing")
            out[f.name] = _convert(f, row[f.name])
        extra = [k for k in row if k not in declared]
        if extra:
            if self.mode == "fixed":
                raise SchemaViolation(f"unexpected field(s) {', '.join(repr(k) for k in extra)} (schema mode fixed)")
            for k in extra:
                out[k] = row[k]
        # Keep the row's own field order (outputs depend on it), declared fields first if absent.
        ordered = {k: out[k] for k in row if k in out}
        for k, v in out.items():
            ordered.setdefault(k, v)
        return ordered


def _convert(f: Field, value: Any) -> Any:
    if value is None or (isinstance(value, str) and value == "" and f.type != "str"):
        if f.optional:
            return None
        raise SchemaViolation(f"field '{f.name}' is empty but required ({f.type})")
    t = f.type
    if t == "any":
        return value
    if t == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float):
            return str(value)
        raise SchemaViolation(f"field '{f.name}': expected str, got {type(value).__name__}")
    if t == "int":
        if isinstance(value, bool):
            raise SchemaViolation(f"field '{f.name}': expected int, got bool")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise SchemaViolation(f"field '{f.name}': {value!r} is not an int") from None
        raise SchemaViolation(f"field '{f.name}': expected int, got {type(value).__name__}")
    if t == "float":
        if isinstance(value, bool):
            raise SchemaViolation(f"field '{f.name}': expected float, got bool")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise SchemaViolation(f"field '{f.name}': {value!r} is not a float") from None
        raise SchemaViolation(f"field '{f.name}': expected float, got {type(value).__name__}")
    # bool
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise SchemaViolation(f"field '{f.name}': {value!r} is not a bool")


OBSERVED = Schema("observed", ())


def parse_schema(raw: Any) -> Schema:
    """`options.schema` -> Schema; PluginConfigError with a path under `schema` otherwise."""
    if raw is None:
        return OBSERVED
    if not isinstance(raw, Mapping):
        raise PluginConfigError("schema", "expected a mapping with mode and fields")
    unknown = [k for k in raw if k not in ("mode", "fields")]
    if unknown:
        raise PluginConfigError(f"schema.{unknown[0]}", "unknown key; allowed: mode, fields")
    mode = raw.get("mode", "observed")
    if mode not in ("fixed", "flexible", "observed"):
        raise PluginConfigError("schema.mode", f"{mode!r} is not allowed; allowed: fixed, flexible, observed")
    fields_raw = raw.get("fields") or []
    if not isinstance(fields_raw, list):
        raise PluginConfigError("schema.fields", "expected a list of 'name: type'")
    fields = []
    for i, spec in enumerate(fields_raw):
        if not isinstance(spec, str) or ":" not in spec:
            raise PluginConfigError(f"schema.fields[{i}]", f"{spec!r} is not 'name: type'")
        name, _, type_ = (p.strip() for p in spec.partition(":"))
        optional = type_.endswith("?")
        type_ = type_.rstrip("?").strip()
        if type_ not in _TYPES:
            raise PluginConfigError(
                f"schema.fields[{i}]", f"type {type_!r} is not allowed; allowed: {', '.join(_TYPES)}"
            )
        fields.append(Field(name, type_, optional))
    if mode in ("fixed", "flexible") and not fields:
        raise PluginConfigError("schema.fields", f"required for mode {mode}")
    return Schema(mode, tuple(fields))


def normalise_header(raw: str) -> str:
    """A CSV header as an identifier: `Amount ($)` -> `amount`, `Notes / Comments` -> `notes_comments`."""
    text = unicodedata.normalize("NFC", raw).strip().lower()
    text = re.sub(r"[^\w]+", "_", text)
    text = re.sub(r"_+", "_", text).strip("_")
    if not text:
        raise ValueError(f"the header {raw!r} normalises to nothing")
    if text[0].isdigit():
        text = "_" + text
    if keyword.iskeyword(text):
        text = text + "_"
    return text
