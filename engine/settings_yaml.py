"""Reading a settings file's YAML: duplicate keys noted, merge keys honoured, aliases bounded,
and `${VAR}` / `${VAR:-default}` expanded in every string value."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_NODES = 1_000_000  # YAML aliases can make a small file huge ("billion laughs")
# Settings nest a handful of levels (a plugin's options a few more); every step after the YAML
# parser walks them recursively, so a deeper file would end in a RecursionError somewhere.
MAX_DEPTH = 64
_MERGE = "tag:yaml.org,2002:merge"


class YamlLoader(yaml.SafeLoader):
    """The safe loader, noting keys that appear twice in one mapping. The prior system kept the
    last silently, so its users' files may have them: a warning, not an error."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue  # `<<: *defaults` brings defaults that the mapping's own keys override
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                mark = key_node.start_mark
                self.duplicates.append(
                    f"line {mark.line + 1}, column {mark.column + 1}: key {key!r} appears twice in one mapping; "
                    "the last one is used"
                )
            if isinstance(key, str | int | float | bool):
                seen.add(key)
        self.flatten_mapping(node)
        return super().construct_mapping(node, deep=deep)


def yaml_size(value: Any) -> int:
    """How many values `value` holds with aliases expanded, counting no further than past the cap."""
    stack, count = [value], 0
    while stack and count <= MAX_NODES:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def yaml_depth(value: Any) -> int:
    """How deeply `value` nests mappings and lists, counting no further than past MAX_DEPTH."""
    stack, deepest = [(value, 1)], 0
    while stack and deepest <= MAX_DEPTH:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def value_kind(value: Any) -> str:
    if value is None:
        return "nothing"
    words = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number"}  # fmt: skip
    kind = words.get(type(value), type(value).__name__)
    if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 40):
        kind += f" ({value!r})"
    return kind


def expand_vars(
    value: Any, env: Mapping[str, str], path: str, errors: list[str], named: dict[str, list[str]] | None = None
) -> Any:
    """`${VAR}` and `${VAR:-default}` in every string value (keys are left alone). `named`, when
    given, gets the variables each key path's value names (so that a resume refused for changed
    settings can say the change may be the environment's, not the file's)."""
    if isinstance(value, str):
        if named is not None and (names := [m.group(1) for m in _VAR.finditer(value)]):
            named[path or "(the whole file)"] = names

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                try:  # (an environment value that is not UTF-8 comes as surrogates: no text to record)
                    env[name].encode("utf-8")
                except UnicodeEncodeError:
                    errors.append(
                        f"{path or '(top)'}: environment variable {name} holds bytes that are not valid UTF-8; "
                        "allowed: a UTF-8 value"
                    )
                    return ""
                return env[name]
            if default is not None:
                return default
            errors.append(
                f"{path or '(top)'}: environment variable {name} is not set; "
                f"allowed: set it, or give a default as ${{{name}:-default}}"
            )
            return ""

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_vars(v, env, join_path(path, k), errors, named) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_vars(v, env, f"{path}[{i}]", errors, named) for i, v in enumerate(value)]
    return value


def join_path(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
