"""Pipeline settings: YAML (the prior system's format) decoded into msgspec Structs.

Every error names the file, the key path (`transforms[2].options.fields`), what was found and
what is allowed; all errors in a file are reported together.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from engine.errors import EngineError
from engine.expressions import Expression, ExpressionError, ExpressionSyntaxError, compile_expression
from engine.plugins.schema import is_int_text
from engine.secrets import fingerprint_key, redact_settings
from engine.settings_yaml import (
    MAX_DEPTH,
    MAX_NODES,
    YamlLoader,
    expand_vars,
    join_path,
    value_kind,
    yaml_depth,
    yaml_size,
)
from landscape.errors import LandscapeError
from landscape.urls import redact
from landscape.visible import one_line


class SettingsError(EngineError):
    """Everything wrong with one settings file, one problem per line."""

    def __init__(self, errors: list[str], loaded: LoadedSettings | None = None) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
        # The settings as decoded, when every error is local (see _Local): the DAG and the plugin
        # options can then still be checked, so that one pass reports them all.
        self.loaded = loaded


class _S(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class SourceSettings(_S, frozen=True):
    plugin: str
    on_success: str
    options: dict[str, Any] = {}


class TransformSettings(_S, frozen=True):
    name: str
    plugin: str
    input: str
    on_error: str
    on_success: str | None = None
    options: dict[str, Any] = {}


class GateSettings(_S, frozen=True):
    name: str
    input: str
    condition: str
    routes: dict[str, str]
    fork_to: list[str] | None = None
    on_error: str | None = None


class CoalesceSettings(_S, frozen=True):
    name: str
    branches: list[str] | dict[str, str]
    policy: Literal["require_all", "quorum", "best_effort", "first"] = "require_all"
    merge: Literal["union", "nested", "select"] = "union"
    timeout_seconds: float | None = None
    quorum_count: int | None = None
    select_branch: str | None = None
    on_success: str | None = None

    def branch_inputs(self) -> dict[str, str]:
        """Branch name -> the connection its tokens arrive on."""
        if isinstance(self.branches, dict):
            return dict(self.branches)
        return {b: b for b in self.branches}


class TriggerSettings(_S, frozen=True):
    count: int | None = None
    timeout_seconds: float | None = None
    condition: str | None = None


class AggregationSettings(_S, frozen=True):
    name: str
    plugin: str
    input: str
    on_success: str
    on_error: str
    trigger: TriggerSettings
    output_mode: Literal["transform", "passthrough"] = "transform"
    expected_output_count: int | None = None
    options: dict[str, Any] = {}


class SinkSettings(_S, frozen=True):
    plugin: str
    options: dict[str, Any] = {}
    on_write_failure: str | None = None


class RetrySettings(_S, frozen=True):
    max_attempts: int = 3
    initial_delay_seconds: float = 1.0
    max_delay_seconds: float = 60.0
    exponential_base: float = 2.0
    failure_threshold: int | None = None
    reset_seconds: float | None = None


class CheckpointSettings(_S, frozen=True):
    """Accepted for compatibility. Durability points replace checkpoints: `frequency` says how
    many rows go into one commit (an int, `every_row`, or `every_n` with `checkpoint_interval`)."""

    enabled: bool = True
    frequency: int | str | None = None
    checkpoint_interval: int | None = None
    aggregation_boundaries: bool | None = None

    def commit_every_rows(self) -> int:
        if isinstance(self.frequency, int):
            return max(1, self.frequency)
        if self.frequency == "every_row":
            return 1
        if self.frequency == "every_n" and self.checkpoint_interval:
            return max(1, self.checkpoint_interval)
        return 1000


class ExportSettings(_S, frozen=True):
    enabled: bool = False
    format: str = "jsonl"
    sign: bool = False


class LandscapeSettings(_S, frozen=True):
    url: str | None = None
    export: ExportSettings = ExportSettings()
    # The key that signs the run's checkpoints (a `.key` from `elspeth keys generate`), and the
    # folder of the witness files; relative to the settings file. See engine/signing.py.
    signing_key: str | None = None
    witness_dir: str | None = None


# The longest age `elspeth purge --older-than` takes. Longer than this, a cutoff counted back from
# today would soon fall before year 1, the first date there is (and timedelta has a limit of its
# own): no payload is that old anyway.
LONGEST_RETENTION_DAYS = 700_000


class PayloadStoreSettings(_S, frozen=True):
    retention_days: int | None = None


class Settings(_S, frozen=True):
    source: SourceSettings
    sinks: dict[str, SinkSettings]
    transforms: list[TransformSettings] = []
    gates: list[GateSettings] = []
    coalesce: list[CoalesceSettings] = []
    aggregations: list[AggregationSettings] = []
    retry: RetrySettings = RetrySettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    landscape: LandscapeSettings = LandscapeSettings()
    payload_store: PayloadStoreSettings = PayloadStoreSettings()


def settings_hash(redacted: dict[str, Any]) -> str:
    """The hash a run records of its settings: of the expanded settings as recorded, secrets as
    their fingerprints. Of the redacted form, not of the text, because a plain hash over a secret
    and the known text around it could be confirmed by guessing the secret."""
    return hashlib.sha256(msgspec.json.encode(redacted, order="deterministic")).hexdigest()


@dataclass
class LoadedSettings:
    settings: Settings
    path: Path
    text_hash: str  # `settings_hash(redacted)`
    redacted: dict[str, Any]
    # The hash earlier ELSPETH recorded (of the expanded settings, secrets in clear): compared on
    # resume only, so that a run it recorded can still be resumed; never recorded again.
    legacy_hash: str = ""
    # The environment variables (`${VAR}`) each key path's value names in the file.
    from_env: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    gate_conditions: dict[str, Expression] = field(default_factory=dict)
    trigger_conditions: dict[str, Expression] = field(default_factory=dict)


_NAME = re.compile(r"^[A-Za-z0-9_-]{1,38}$")
# ("source": the source's own node, in the events and `show`; a sink of that name was left out
# of its nodes, a transform of it refused as "a cycle: source -> source": a new user's review)
_RESERVED = {"continue", "fork", "on_success", "source"}
# What a missing required key may hold, where the type alone says too little.
_HINTS = {
    "on_error": "a sink name or discard",
    "input": "a connection name",
    "on_success": "a connection or sink name",
    "plugin": "a plugin name, see `elspeth plugins`",
    "name": "a node name of 1 to 38 of A-Z a-z 0-9 _ -",
    "condition": "an expression over row",
    "routes": "a mapping of label -> sink, connection or fork",
    "branches": "a list of branch names, or a mapping of branch -> input connection",
}
_MAX_SETTINGS_BYTES = 10 * 1024 * 1024
_MAX_LABEL = 64  # characters of a route label
_FREQUENCIES = ("every_row", "every_n", "aggregation_only")


def _nodes(value: Any) -> Iterator[tuple[str, Any]]:
    """Every value in the settings with its key path, each before what it holds, in order
    (YAML's !!set, !!pairs and !!omap too). Iterative: the settings may be nested deeply."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        yield path, item
        if isinstance(item, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in reversed(item.items()))
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(item))))


def _key_not_text(value: Any) -> tuple[str, Any] | None:
    """The key path of the first mapping that has a key that is not text, and that key."""
    for path, item in _nodes(value):
        if isinstance(item, dict):
            odd = next((k for k in item if not isinstance(k, str)), _NONE)
            if odd is not _NONE:
                return path, odd
    return None


_NONE = object()


def _text_not_unicode(value: Any) -> tuple[str, str] | None:
    """The key path of the first key or text value that UTF-8 cannot hold, and that text: one with
    a lone surrogate, which a YAML escape (`"\\ud800"`) can spell. Nothing can record it (every
    event is UTF-8 JSON)."""
    for path, item in _nodes(value):
        if isinstance(item, str):
            texts = [item]
        elif isinstance(item, dict):
            texts = [k for k in item if isinstance(k, str)]
        else:
            continue
        odd = next((t for t in texts if not _utf8(t)), None)
        if odd is not None:
            return path, odd
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _escaped(text: str) -> str:
    """`text` as it can be printed, each lone surrogate as its escape."""
    return text.encode("utf-8", "backslashreplace").decode()


def _shortened(text: str) -> str:
    """A value as it can be shown on one line: its first 40 characters, as Python spells a
    string (a newline as \\n, a lone surrogate as its escape)."""
    return _escaped(repr(text[:40])[1:-1] + ("…" if len(text) > 40 else ""))


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> LoadedSettings:
    """Read, expand, decode and check one settings file; raise SettingsError listing every problem.
    A key given twice in one mapping is a warning when the file is otherwise good, and one of its
    lines when it is not: the second `source:` of a file, holding part of one, made it `source.on_success:
    missing`, with nothing said of the first (a new user's review)."""
    duplicates: list[str] = []
    try:
        return _load_settings(path, environ, duplicates)
    except SettingsError as e:
        if not duplicates:
            raise
        raise SettingsError([*e.errors, *(f"{one_line(path)}: {d}" for d in duplicates)], e.loaded) from None


def _load_settings(path: Path, environ: Mapping[str, str] | None, duplicates: list[str]) -> LoadedSettings:
    env = os.environ if environ is None else environ
    where = one_line(path)  # (a typed path: a line feed in it would print a line of its own)
    try:
        info = path.stat()  # stat, not open: opening a FIFO would wait for a writer
        if not stat.S_ISREG(info.st_mode):
            raise SettingsError([f"{where}: not a regular file; allowed: a settings file (YAML)"])
        if info.st_size > _MAX_SETTINGS_BYTES:
            raise SettingsError(
                [f"{where}: {info.st_size:,} bytes; allowed: a settings file of at most {_MAX_SETTINGS_BYTES:,} bytes"]
            )
        with path.open("rb") as f:  # read no more than allowed, whatever the size said
            data = f.read(_MAX_SETTINGS_BYTES + 1)
        if len(data) > _MAX_SETTINGS_BYTES:
            raise SettingsError([f"{where}: more than {_MAX_SETTINGS_BYTES:,} bytes; allowed: a smaller settings file"])
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise SettingsError([f"{where}: the settings file does not exist"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError([f"{where}: cannot read the settings file: {e}"]) from None
    try:
        loader = YamlLoader(text)
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
        duplicates.extend(loader.duplicates)
    except RecursionError:
        # PyYAML composes nested collections recursively: a few hundred `[` deep exhaust the stack.
        raise SettingsError(
            [
                f"{where}: the YAML is nested too deeply to read; allowed: at most {MAX_DEPTH} levels of mappings and lists"
            ]
        ) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown position"
        problem = e.problem or e.context or "cannot be parsed"
        raise SettingsError([f"{where}: malformed YAML at {at}: {problem}; allowed: well-formed YAML"]) from None
    except yaml.YAMLError as e:  # (a NUL: a ReaderError, whose text spans two lines)
        raise SettingsError([f"{where}: malformed YAML: {' '.join(str(e).split())}"]) from None
    if not isinstance(raw, dict):
        raise SettingsError(
            [f"{where}: (top): found {value_kind(raw)}; allowed: a mapping of {', '.join(_field_names(Settings))}"]
        )
    errors: list[str] = []
    if yaml_size(raw) > MAX_NODES:
        raise SettingsError([f"{where}: (top): more than {MAX_NODES} values once YAML aliases are expanded"])
    if yaml_depth(raw) > MAX_DEPTH:
        raise SettingsError(
            [f"{where}: (top): nested too deeply; allowed: at most {MAX_DEPTH} levels of mappings and lists"]
        )
    from_env: dict[str, list[str]] = {}
    data = expand_vars(raw, env, "", errors, from_env)
    odd = _text_not_unicode(data)
    if odd is not None:
        at, text = _escaped(odd[0]) or "(top)", _shortened(odd[1])
        raise SettingsError(
            [
                f'{where}: {at}: found "{text}", which holds a lone surrogate (a YAML escape such as "\\ud800"): not '
                "Unicode text, which nothing can record; allowed: text that UTF-8 can hold"
            ]
        )
    settings = _decode_struct(Settings, data, "", errors)
    if not isinstance(settings, Settings):
        raise SettingsError([f"{where}: {e}" for e in errors] or [f"{where}: invalid settings"])
    try:
        canonical = msgspec.json.encode(data, order="deterministic")
    except (TypeError, msgspec.EncodeError, UnicodeEncodeError) as e:  # e.g. option keys of mixed types
        found = _key_not_text(data)
        if found is None:
            errors.append(f"(top): the settings cannot be recorded: {e}")
        else:
            errors.append(
                f"{found[0] or '(top)'}: found a key that is {value_kind(found[1])}; allowed: keys that are text (in "
                "quotes: YAML reads 12 as a number, no/yes as booleans, an empty key as null)"
            )
        raise SettingsError([f"{where}: {m}" for m in errors]) from None
    loaded = LoadedSettings(settings=settings, path=path, text_hash="", redacted={}, from_env=from_env)
    _check(loaded, errors)
    url = settings.landscape.url
    from landscape.db import is_postgresql_url, normalise_url  # here: it brings the database driver

    if url and not url.startswith("sqlite") and not is_postgresql_url(url):
        errors.append(
            f"landscape.url: found {redact(url)!r}; allowed: a postgresql:// URL (or the prior system's "
            "sqlite:// URL, which is ignored with a warning)"
        )
    elif url and not url.startswith("sqlite"):
        try:  # (as the run would open it: 'postgresql://[::1' passed validate, then failed the run)
            normalise_url(url)
        except LandscapeError as e:
            errors.append(f"landscape.url: {e}; allowed: a postgresql:// URL")
    if errors:
        local = all(isinstance(e, _Local) for e in errors)
        raise SettingsError([f"{where}: {e}" for e in errors], loaded if local else None)
    # Only for settings that decode and check: a file with errors in them makes no key in the home.
    # A home whose key file cannot be used fails here (FingerprintKeyError, one line, exit 1: the
    # machine's to fix, not the settings'), before anything is run.
    loaded.redacted = redact_settings(msgspec.json.decode(canonical), env)
    loaded.text_hash = settings_hash(loaded.redacted)
    loaded.legacy_hash = hashlib.sha256(canonical).hexdigest()
    fingerprint_key(env)
    if url and url.startswith("sqlite"):
        loaded.warnings.append(
            f"{where}: landscape.url {redact(url)} is not an audit store here (SQLite); using "
            "PostgreSQL (the embedded one, or --database / ELSPETH_DATABASE_URL)"
        )
    if settings.landscape.export.enabled:
        loaded.warnings.append(
            f"{where}: landscape.export is recorded with the run but not acted on: a run writes no export; write "
            "one when it has ended with `elspeth export RUN_ID -o FILE`"
        )
    if settings.payload_store.retention_days is not None:
        # The prior system's key: a user who relies on it would keep row data for good, unwarned.
        days = settings.payload_store.retention_days
        capped = ""
        if days > LONGEST_RETENTION_DAYS:  # a command purge would refuse is no advice
            days = LONGEST_RETENTION_DAYS
            capped = f"; {days}d (about 1900 years) is the longest purge takes"
        loaded.warnings.append(
            f"{where}: payload_store.retention_days is recorded with the run but not acted on: no run erases row "
            f"data; apply retention with `elspeth purge --older-than {days}d --reason TEXT` (e.g. daily, from cron)"
            f"{capped}"
        )
    loaded.warnings.extend(f"{where}: {w}" for w in loader.duplicates)
    quarantine = settings.source.options.get("on_validation_failure")
    sink = settings.sinks.get(quarantine) if isinstance(quarantine, str) else None
    if sink is not None and sink.plugin == "csv":
        # Valid, and the prior system's; a row refused there is recorded failed, not lost, but a
        # user who reads the file for the rows the source refused will not find it there.
        loaded.warnings.append(
            f"{where}: sinks.{quarantine} is a CSV file, whose columns the first row written fixes, and the source's "
            "on_validation_failure, which receives each refused record as it was read: one with other fields than "
            "the first (a line that could not be parsed: __raw_line__, __line_number__, …; a record with a field "
            "more or less) is refused there (recorded failed, sink_row_refused); a json or jsonl sink takes them all"
        )
    for i, g in enumerate(settings.gates):
        one = {"true", "false"} & set(g.routes)
        constant = {"True": "true", "False": "false"}.get(g.condition.strip())  # a gate that only forks
        if len(one) == 1 and one != {constant}:
            # Valid (the condition may give other labels), but a true/false condition then fails
            # every row it gives the other for, in a run that completes.
            (have,) = one
            other = "false" if have == "true" else "true"
            loaded.warnings.append(
                f"{where}: gates[{i}].routes ({g.name}) has '{have}' and no '{other}': a row for which the condition is "
                f"{other} fails ('no route for label {other!r}'); add a '{other}' route if the condition gives it"
            )
    for i, c in enumerate(settings.coalesce):
        if c.policy == "first" and c.merge == "select":
            # Valid, and the prior system's, but easily not what was meant: which branch arrives
            # first is decided by the branches' paths (the fork's order, what holds or diverts a row).
            loaded.warnings.append(
                f"{where}: coalesce[{i}] ({c.name}): policy first merges on the first branch to arrive, and merge "
                f"select keeps only {c.select_branch}'s row, so a row whose first arrival is another branch fails "
                f"(select_missing); to wait for {c.select_branch}, use policy require_all, quorum or best_effort"
            )
    for i, a in enumerate(settings.aggregations):
        if a.on_error != "discard":
            # Required, as in the prior system's files, and valid; but a batch error fails every
            # token of the batch (SETTINGS.md), so a sink named here receives nothing, which a user
            # who named one expects it to (a careless user's review).
            loaded.warnings.append(
                f"{where}: aggregations[{i}].on_error ({a.name}): '{a.on_error}' receives nothing: a batch error "
                "fails every row of the batch, recorded failed with the reason (batch_failed); write on_error: "
                "discard to say so"
            )
    return loaded


# -- decoding: field by field, so that every problem in a file is reported at once -----------


def _field_names(cls: type[msgspec.Struct]) -> list[str]:
    return [f.name for f in msgspec.structs.fields(cls)]


class _Local(str):
    """An error that leaves the rest of the file checkable: an unknown key (the struct is still
    built from its known keys) or a bad expression. When every error is local, the DAG and the
    plugin options are checked too and reported in the same pass; other errors (a missing
    variable, a name used twice) would only make those checks report their consequences."""


def _decode_struct(cls: type[msgspec.Struct], value: Any, path: str, errors: list[str]) -> Any:
    """`value` decoded as `cls`, or None after appending each problem (with its key path) to errors."""
    fields = msgspec.structs.fields(cls)
    names = [f.name for f in fields]
    if not isinstance(value, dict):
        errors.append(f"{path or '(top)'}: found {value_kind(value)}; allowed: a mapping of {', '.join(names)}")
        return None
    before = len(errors)
    for key in value:
        if key not in names:
            errors.append(_Local(f"{join_path(path, key)}: unknown key; allowed: {', '.join(names)}"))
    decoded: dict[str, Any] = {}
    for f in fields:
        if f.name not in value:
            if f.required:
                allowed = _HINTS.get(f.name) or _describe(f.type)
                errors.append(f"{join_path(path, f.name)}: missing; it is required (allowed: {allowed})")
            continue
        item = value[f.name]
        if item is None and cls is Settings and not f.required:
            continue  # an empty top-level section (`transforms:` with nothing under it)
        decoded[f.name] = _convert(item, f.type, join_path(path, f.name), errors)
    if any(not isinstance(e, _Local) for e in errors[before:]):
        return None
    return cls(**decoded)


def _convert(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _decode_struct(tp, value, path, errors)
    if origin is Literal:
        if value in args and isinstance(value, str):
            return value
        errors.append(f"{path}: found {value_kind(value)}; allowed: {', '.join(map(str, args))}")
        return None
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if value is None and len(members) < len(args):
            return None
        if isinstance(value, str) and int in members and is_int_text(value):
            return int(value)  # an expanded "${N:-5}" where a number or a word may stand
        for member in members:  # a container picks the member of its shape, to name the inner key
            shape = typing.get_origin(member) or member
            if shape in (dict, list) and isinstance(value, shape):
                return _convert(value, member, path, errors)
    elif origin is dict and isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                hint = " (YAML reads yes/no/on/off/true/false as booleans: quote them)" if isinstance(k, bool) else ""
                errors.append(f"{path}: the key {k!r} is {value_kind(k)}; allowed: a string{hint}")
                continue
            out[k] = _convert(v, args[1], join_path(path, k), errors)
        return out
    elif origin is list and isinstance(value, list):
        return [_convert(v, args[0], f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if tp is Any:
        return value
    try:
        # strict=False: a string such as an expanded "${N:-5}" may stand for a number or a boolean.
        return msgspec.convert(value, tp, strict=False)
    except msgspec.ValidationError as e:
        hint = " (YAML reads yes/no/on/off/true/false as booleans: quote them)" if isinstance(value, bool) else ""
        if isinstance(value, str) and "out of range" in str(e):  # (YAML 1.1 reads 1.0e400 as text, then too large)
            hint = " (it reads as a number out of the range this setting takes)"
        errors.append(f"{path}: found {value_kind(value)}; allowed: {_describe(tp)}{hint}")
        return None


def _describe(tp: Any) -> str:
    """A type in plain words, for "what is allowed"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list, each {_describe(args[0])}"
    if origin is dict:
        return "a mapping" if args[1] is Any else f"a mapping of name -> {_describe(args[1])}"
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return f"a mapping of {', '.join(_field_names(tp))}"
    words = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "nothing"}
    return words.get(tp, getattr(tp, "__name__", str(tp)))


# -- checks across keys (SETTINGS.md) ---------------------------------------------------------


def _check(loaded: LoadedSettings, errors: list[str]) -> None:
    s = loaded.settings
    seen: dict[str, str] = {}
    nodes = (
        [(f"transforms[{i}]", t.name) for i, t in enumerate(s.transforms)]
        + [(f"gates[{i}]", g.name) for i, g in enumerate(s.gates)]
        + [(f"coalesce[{i}]", c.name) for i, c in enumerate(s.coalesce)]
        + [(f"aggregations[{i}]", a.name) for i, a in enumerate(s.aggregations)]
    )
    for path, name in nodes:
        _check_name(name, f"{path}.name", errors)
        if name in seen:
            errors.append(f"{path}.name: '{name}' is already the name of {seen[name]}; allowed: a unique name")
        seen.setdefault(name, path)
    for name in s.sinks:
        _check_name(name, f"sinks.{name}", errors)
        if name != name.lower():
            errors.append(f"sinks.{name}: '{name}' has capitals; allowed: a lowercase sink name")
        if name == "discard":
            errors.append("sinks.discard: 'discard' is reserved (it means: record, do not write)")
        if name in seen:
            errors.append(f"sinks.{name}: '{name}' is already the name of {seen[name]}; allowed: a unique name")
    sinks = sorted(s.sinks)

    def error_target(path: str, target: object, *, other_than: str | None = None) -> None:
        choices = [n for n in sinks if n != other_than]
        if target is not None and target != "discard" and target not in choices:
            what = "the sink itself, whose writes failed" if target == other_than else "not a sink"
            errors.append(f"{path}: '{target}' is {what}; allowed: discard, {', '.join(choices) or '(no sinks)'}")

    error_target("source.options.on_validation_failure", s.source.options.get("on_validation_failure"))
    for i, t in enumerate(s.transforms):
        error_target(f"transforms[{i}].on_error", t.on_error)
    for name, sink in s.sinks.items():
        error_target(f"sinks.{name}.on_write_failure", sink.on_write_failure, other_than=name)
    for i, g in enumerate(s.gates):
        _check_gate(loaded, i, g, errors)
        error_target(f"gates[{i}].on_error", g.on_error)
    for i, c in enumerate(s.coalesce):
        _check_coalesce(i, c, errors)
    for i, a in enumerate(s.aggregations):
        error_target(f"aggregations[{i}].on_error", a.on_error)
        _check_aggregation(loaded, i, a, errors)
    _check_sections(s, errors)
    _check_no_nul(s, errors)


# Plugin options that end in a file's name, a database or a table's name: the operating system
# takes no NUL in a path (Python raises ValueError on the first stat), and PostgreSQL none in an
# identifier, so such a value could only fail later: at a sink's open, after the run began.
_PATH_OPTIONS = ("path", "url", "table")


def _check_no_nul(s: Settings, errors: list[str]) -> None:
    named: list[tuple[str, object]] = [
        ("landscape.url", s.landscape.url),
        ("landscape.signing_key", s.landscape.signing_key),
        ("landscape.witness_dir", s.landscape.witness_dir),
    ]
    named += [(f"source.options.{k}", s.source.options.get(k)) for k in _PATH_OPTIONS]
    for name, sink in s.sinks.items():
        named += [(f"sinks.{name}.options.{k}", sink.options.get(k)) for k in _PATH_OPTIONS]
    for path, value in named:
        if isinstance(value, str) and "\x00" in value:
            what = "a table name" if path.endswith(".table") else "a path or URL"
            errors.append(f"{path}: found a NUL character (\\0); allowed: {what} without one")


def _finite(value: float) -> bool:
    # NaN is neither more nor less than any bound, so `< low` lets it through; and a NaN or
    # infinite deadline would sit in the deadline heap for ever (a NaN at its top stops every
    # other one firing). An int is finite (and may be too large to become a float).
    return not isinstance(value, float) or math.isfinite(value)


def _positive(seconds: float) -> bool:
    return _finite(seconds) and seconds > 0


def _check_name(name: str, path: str, errors: list[str]) -> None:
    if not _NAME.match(name):
        errors.append(f"{path}: '{name}' is not a valid name; allowed: 1 to 38 of A-Z a-z 0-9 _ -")
    elif name in _RESERVED or name.startswith("__"):
        errors.append(
            f"{path}: '{name}' is reserved; allowed: any other name (not continue, fork, on_success, source, __*)"
        )


def _check_gate(loaded: LoadedSettings, i: int, g: GateSettings, errors: list[str]) -> None:
    try:
        loaded.gate_conditions[g.name] = compile_expression(g.condition)
    except ExpressionSyntaxError as e:
        errors.append(_Local(f"gates[{i}].condition (gate '{g.name}'): {e}"))
    if not g.routes:
        errors.append(f"gates[{i}].routes: found an empty mapping; allowed: label -> sink, connection or fork")
    for label in g.routes:
        # A label is recorded in the event of every row it routes: keep it short and printable.
        if not 1 <= len(label) <= _MAX_LABEL or not label.isprintable():
            shown = label if len(label) <= 40 else f"{label[:40]}… ({len(label):,} characters)"
            errors.append(
                f"gates[{i}].routes: the label {shown!r} is not allowed; allowed: 1 to {_MAX_LABEL} printable "
                "characters (no control characters or line breaks)"
            )
    forks = "fork" in g.routes.values()
    if forks and not g.fork_to:
        errors.append(f"gates[{i}].fork_to: missing; it is required when a route is 'fork' (a list of branches)")
    if g.fork_to and not forks:
        errors.append(f"gates[{i}].fork_to: found a list; allowed only when a route is 'fork'")
    if g.fork_to and len(set(g.fork_to)) != len(g.fork_to):
        errors.append(f"gates[{i}].fork_to: a branch is named twice; allowed: distinct branch names")


def _check_coalesce(i: int, c: CoalesceSettings, errors: list[str]) -> None:
    branches = c.branch_inputs()
    path = f"coalesce[{i}]"
    if len(branches) < 2:
        errors.append(f"{path}.branches: found {len(branches)} branch(es); allowed: at least 2")
    if len(set(branches.values())) != len(branches):
        errors.append(f"{path}.branches: two branches read the same connection; allowed: one connection per branch")
    if c.policy == "best_effort" and c.timeout_seconds is None:
        errors.append(f"{path}.timeout_seconds: missing; it is required for policy best_effort")
    if c.timeout_seconds is not None and not _positive(c.timeout_seconds):
        errors.append(f"{path}.timeout_seconds: found {c.timeout_seconds}; allowed: a finite number more than 0")
    if c.policy == "quorum":
        if c.quorum_count is None:
            errors.append(f"{path}.quorum_count: missing; it is required for policy quorum")
        elif not 1 <= c.quorum_count <= len(branches):
            errors.append(
                f"{path}.quorum_count: found {c.quorum_count}; allowed: 1 to {len(branches)} (the number of branches)"
            )
    elif c.quorum_count is not None:
        errors.append(
            f"{path}.quorum_count: found {c.quorum_count} with policy {c.policy}, which does not read it; allowed: "
            "policy: quorum, or no quorum_count"
        )
    if c.merge == "select":
        if c.select_branch is None:
            errors.append(f"{path}.select_branch: missing; it is required for merge select")
        elif c.select_branch not in branches:
            errors.append(f"{path}.select_branch: found '{c.select_branch}'; allowed: {', '.join(branches)}")
    elif c.select_branch is not None:
        errors.append(
            f"{path}.select_branch: found '{c.select_branch}' with merge {c.merge}, which does not read it; allowed: "
            "merge: select, or no select_branch"
        )


_TRIGGER_FIELDS = frozenset({"batch_count", "batch_age_seconds"})


def _never_evaluates(condition: Expression) -> str | None:
    """Why a trigger condition fails for a batch of one row whatever its age (a constant error,
    such as a division by zero), or None. Refused then: at run time it would fail the run. One
    that fails only at age 0 (a rate, batch_count / batch_age_seconds) is left to run."""
    found = None
    for age in (0.0, 1.0):
        try:
            condition.evaluate({"batch_count": 1, "batch_age_seconds": age})
            return None
        except ExpressionError as e:
            found = found or str(e)
    return found


def _check_aggregation(loaded: LoadedSettings, i: int, a: AggregationSettings, errors: list[str]) -> None:
    tr, path = a.trigger, f"aggregations[{i}].trigger"
    if tr.count is None and tr.timeout_seconds is None and tr.condition is None:
        errors.append(f"{path}: found no trigger; allowed: at least one of count, timeout_seconds, condition")
    if tr.count is not None and tr.count < 1:
        errors.append(f"{path}.count: found {tr.count}; allowed: 1 or more")
    if tr.timeout_seconds is not None and not _positive(tr.timeout_seconds):
        errors.append(f"{path}.timeout_seconds: found {tr.timeout_seconds}; allowed: a finite number more than 0")
    if tr.condition is not None:
        try:
            condition = compile_expression(tr.condition)
        except ExpressionSyntaxError as e:
            errors.append(_Local(f"{path}.condition (aggregation '{a.name}'): {e}"))
        else:
            # It sees the batch, not a row: anything else it names could never be there.
            if condition.fields is None:
                found = "the whole row or a computed key"
            else:
                found = ", ".join(f"row[{f!r}]" for f in sorted(condition.fields - _TRIGGER_FIELDS))
            if found:
                errors.append(
                    _Local(
                        f"{path}.condition (aggregation '{a.name}'): found {found}; "
                        "allowed: row['batch_count'], row['batch_age_seconds']"
                    )
                )
            else:
                why = _never_evaluates(condition)
                if why is not None:
                    errors.append(
                        _Local(
                            f"{path}.condition (aggregation '{a.name}'): it cannot be evaluated for a batch of one row, "
                            f"just opened or a second old (batch_count 1, batch_age_seconds 0.0 or 1.0): {why}"
                        )
                    )
            loaded.trigger_conditions[a.name] = condition
    if a.expected_output_count is not None and a.expected_output_count < 0:
        errors.append(f"aggregations[{i}].expected_output_count: found {a.expected_output_count}; allowed: 0 or more")


def _check_sections(s: Settings, errors: list[str]) -> None:
    if not s.sinks:
        errors.append("sinks: found no sinks; allowed: a mapping of at least one sink name -> {plugin, options}")
    r = s.retry
    for key, value, low in (
        ("max_attempts", r.max_attempts, 1),
        ("initial_delay_seconds", r.initial_delay_seconds, 0),
        ("max_delay_seconds", r.max_delay_seconds, 0),
        ("exponential_base", r.exponential_base, 1),
        ("failure_threshold", r.failure_threshold, 1),
        ("reset_seconds", r.reset_seconds, 0),
    ):
        if value is not None and not (_finite(value) and value >= low):
            finite = "" if key in ("max_attempts", "failure_threshold") else "a finite number, "
            errors.append(f"retry.{key}: found {value}; allowed: {finite}{low} or more")
    c = s.checkpoint
    if isinstance(c.frequency, int) and c.frequency < 1:
        errors.append(f"checkpoint.frequency: found {c.frequency}; allowed: 1 or more rows")
    if isinstance(c.frequency, str) and c.frequency not in _FREQUENCIES:
        errors.append(
            f"checkpoint.frequency: found '{c.frequency}'; allowed: a number of rows, {', '.join(_FREQUENCIES)}"
        )
    if c.frequency == "every_n" and c.checkpoint_interval is None:
        errors.append("checkpoint.checkpoint_interval: missing; it is required when frequency is every_n")
    if c.checkpoint_interval is not None and c.checkpoint_interval < 1:
        errors.append(f"checkpoint.checkpoint_interval: found {c.checkpoint_interval}; allowed: 1 or more")
    if s.payload_store.retention_days is not None and s.payload_store.retention_days < 1:
        errors.append(f"payload_store.retention_days: found {s.payload_store.retention_days}; allowed: 1 or more")
