"""Reading a plugin's `options` mapping: typed getters, and unknown options refused by name."""

from __future__ import annotations

import codecs
import os
import unicodedata
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import msgspec

from engine.plugins.protocol import PluginConfigError
from engine.plugins.schema import is_int_text
from engine.settings_yaml import value_kind

_COMMON = ("schema",)  # every plugin accepts a schema
_QUOTE = "in quotes: YAML reads 0123 as a number, no/yes as booleans, an empty item as null"


def text_item(value: Any, where: str, what: str) -> str:
    """`value`, an item of a list (or a value of a mapping) that must be text such as a field
    name or a pattern. Never str() of something else: YAML reads `0123` as 83 and `no` as False,
    and /83/ or a field 'False' would be used without a word."""
    if not isinstance(value, str):
        raise PluginConfigError(where, f"found {value_kind(value)}; allowed: {what} {_QUOTE}")
    return value


class Options:
    def __init__(self, options: Mapping[str, Any] | None, *allowed: str) -> None:
        self.options = dict(options or {})
        names = tuple(dict.fromkeys((*allowed, *_COMMON)))
        unknown = [str(key) for key in self.options if key not in names]
        if unknown:
            others = f" (so are {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
            raise PluginConfigError(unknown[0], f"unknown option{others}; allowed: {', '.join(names)}")

    def raw(self, key: str) -> Any:
        return self.options.get(key)

    def _get(self, key: str, kinds: tuple[type, ...], what: str, default: Any, required: bool) -> Any:
        if key not in self.options or self.options[key] is None:
            if required:
                raise PluginConfigError(key, f"required ({what})")
            return default
        value = self.options[key]
        if isinstance(value, str) and str not in kinds and kinds[0] in (int, float, bool):
            # As for the settings' own keys: text such as an expanded "${SKIP:-0}" may stand for
            # a number or a boolean (an integer only as plain digits, not '1e3' or '5.0').
            text = value.strip()
            if kinds[0] is not int or is_int_text(text):
                with suppress(msgspec.ValidationError):
                    value = msgspec.convert(text, kinds[0], strict=False)
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise PluginConfigError(key, f"found {value!r}; allowed: {what}")
        return value

    def encoding(self) -> str:
        """`encoding`: the canonical name of a text codec (default utf-8). Byte-to-byte codecs
        such as hex or base64 are refused: they cannot read or write text."""
        name = self.str_("encoding", "utf-8")
        try:
            info = codecs.lookup(name)
        except (LookupError, ValueError):  # (ValueError: a NUL in the name, which no codec has)
            raise PluginConfigError("encoding", f"found {name!r}; allowed: a text encoding such as utf-8") from None
        if not info._is_text_encoding or not _streams(info.name):  # (the stdlib's own flag, then a trial)
            raise PluginConfigError("encoding", f"found {name!r}, not a text encoding; allowed: e.g. utf-8, latin-1")
        return info.name

    def str_(self, key: str, default: str = "", *, required: bool = False) -> str:
        value = self._get(key, (str,), "a string", default, required)
        return str(value)

    def path(self, key: str = "path") -> str:
        """A file's path (required): text without control characters or line separators. The
        path is printed (the run's summary, `show`, `explain`), and a line break in it printed
        lines that looked like the summary's own."""
        value = self.str_(key, required=True)
        for i, c in enumerate(value):
            if unicodedata.category(c) in ("Cc", "Zl", "Zp"):
                raise PluginConfigError(
                    key, f"holds U+{ord(c):04X} (character {i + 1}); allowed: a path without control characters"
                )
        if value.endswith(("/", os.sep)):
            # (pathlib drops the slash: `out/` meant as a folder was written as a file named `out`)
            raise PluginConfigError(
                key, f"found {value!r}, which ends with '/' and so names a folder; allowed: a file's path"
            )
        return value

    def delimiter(self) -> str:
        """A CSV `delimiter`: one character, not the quote or a line break, which the csv module
        takes but which then split a record in other places than the ones written (a file whose
        rows read back as others)."""
        value = self.str_("delimiter", ",")
        if len(value) != 1 or value in '"\r\n':
            raise PluginConfigError(
                "delimiter", f"found {value!r}; allowed: one character other than a double quote or a line break"
            )
        return value

    def int_(self, key: str, default: int = 0, *, required: bool = False) -> int:
        value = self._get(key, (int,), "an integer", default, required)
        return int(value)

    def bool_(self, key: str, default: bool = False) -> bool:
        return bool(self._get(key, (bool,), "true or false", default, False))

    def list_(self, key: str, *, required: bool = False) -> list[Any] | None:
        value = self._get(key, (list,), "a list", None, required)
        return None if value is None else list(value)

    def dict_(self, key: str, *, required: bool = False) -> dict[str, Any] | None:
        value = self._get(key, (dict,), "a mapping", None, required)
        return None if value is None else dict(value)


_SAMPLE = 'id,name\r\n1,a b\n2,"c"\n'


def _streams(name: str) -> bool:
    """Whether text written a piece at a time in this codec (as a sink writes, flush by flush,
    and a source reads, line by line) reads back as that text. Some codecs the stdlib calls text
    are not: `idna` holds text back until a dot (a sink wrote nothing, its rows recorded as
    written), `punycode` moves every non-ASCII character to the end, `undefined` refuses all."""
    try:
        encoder = codecs.getincrementalencoder(name)()
        # (never `final`: a sink's file must read whole after each flush, and it ends none)
        data = b"".join(encoder.encode(piece) for piece in (_SAMPLE[:4], _SAMPLE[4:13], _SAMPLE[13:]))
        decoder = codecs.getincrementaldecoder(name)()
        text = decoder.decode(data[:5]) + decoder.decode(data[5:], final=True)
        return text == _SAMPLE and data.decode(name) == _SAMPLE
    except (UnicodeError, ValueError, TypeError, LookupError):
        return False
