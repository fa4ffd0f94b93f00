"""What a recorded reason may say about a row: never a value, never a field name the input chose.

Reasons (quarantine, row errors, batch and run failures) go into event bodies and projections,
which an erasure cannot reach: the log is append-only and hash-chained. A row's values are in
its payload, which `purge --row` erases and `explain` shows. So a reason names a field only
when the settings name it (a declared schema field, a plugin option), and otherwise gives its
position in the row; it says what type a value has and how long it is, never what it holds;
and an exception raised by code that handled rows keeps its class name but not its message,
unless the message is one whose text is known to hold no row data (see `recorded`).
See docs/erasure.md, "Reasons hold no row data".
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from engine.errors import EngineError

# Python builds these exceptions' messages from type names, never from values (`'<' not
# supported between instances of 'str' and 'int'`, `int too large to convert to float`, `list
# index out of range`); a ValueError's message quotes the text it could not convert.
_TYPE_ONLY_MESSAGES = (TypeError, OverflowError, IndexError, ZeroDivisionError, RecursionError)


def described(value: Any) -> str:
    """A value as a reason may name it: its type and its size ("a str of 12 characters")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int):
        if value.bit_length() <= 64:
            return "an int"
        return f"an int of about {int(value.bit_length() * 0.30103):,} digits"  # no str(): it may be too long
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return f"a str of {_count(len(value), 'character')}"
    if isinstance(value, bytes | bytearray):
        return f"{_count(len(value), 'byte')}"
    if isinstance(value, Mapping):
        return f"an object of {_count(len(value), 'field')}"
    if isinstance(value, list | tuple | set | frozenset):
        return f"a {type(value).__name__} of {_count(len(value), 'item')}"
    return f"a {type(value).__name__}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def field_named(row: Mapping[str, Any], name: str, named: Collection[str]) -> str:
    """`field 'amount'` when the settings name the field (`named`); otherwise its 1-based
    position (`field 4 of the row`): a name the input chose is row data."""
    if name in named:
        return f"field '{name}'"
    position = next((i for i, k in enumerate(row, 1) if k == name), None)
    return "a field the row does not have" if position is None else f"field {position} of the row"


def fields_named(row: Mapping[str, Any], names: Iterable[str], named: Collection[str]) -> str:
    """Several fields of `row` as `field_named` gives one: the named ones by name, the others by
    position ("'a', 'b' and the row's fields 4, 7")."""
    wanted = list(names)
    shown = [f"'{n}'" for n in wanted if n in named]
    rest = set(wanted) - set(named)
    positions = [str(i) for i, k in enumerate(row, 1) if k in rest]
    if positions:
        shown.append(f"the row's field{'s' if len(positions) > 1 else ''} {', '.join(positions)}")
    return ", ".join(shown)


def recorded(error: BaseException, *, raised_by_python: bool = False) -> str:
    """An exception raised by code that handled rows, as it is recorded: ELSPETH's own errors
    with their text (a plugin's RowError or PluginError reason must hold no row data: the
    plugin contract, docs/plugins.md), an OSError with its errno text (not its file name),
    and, `raised_by_python` (the gate language, which runs no plugin code), exceptions whose
    messages Python builds from types alone with theirs; anything else by its class name only:
    its message may quote the row (`invalid literal for int() with base 10: '123-45-6789'`),
    and a plugin's own TypeError may say anything."""
    name = type(error).__name__
    if isinstance(error, EngineError):
        return f"{name}: {error}"
    if isinstance(error, OSError):
        return f"{name}: {error.strerror}" if error.strerror else name
    if raised_by_python and isinstance(error, _TYPE_ONLY_MESSAGES):
        text = str(error)
        return f"{name}: {text[:200]}" if text else name
    return f"{name} (its message is not recorded: it may quote row data)"
