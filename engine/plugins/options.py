"""Reading a plugin's `options` mapping: typed getters, and unknown options refused by name."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import msgspec

from engine.plugins.protocol import PluginConfigError

_COMMON = ("schema",)  # every plugin accepts a schema


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
            # a number or a boolean.
            with suppress(msgspec.ValidationError):
                value = msgspec.convert(value.strip(), kinds[0], strict=False)
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise PluginConfigError(key, f"found {value!r}; allowed: {what}")
        return value

    def str_(self, key: str, default: str = "", *, required: bool = False) -> str:
        value = self._get(key, (str,), "a string", default, required)
        return str(value)

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
