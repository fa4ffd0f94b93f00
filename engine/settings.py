"""Pipeline settings: YAML (the prior system's format) decoded into msgspec Structs.

Every error names the file, the key path (`transforms[2].options.fields`), what was found and
what is allowed; all errors in a file are reported together.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from engine.expressions import Expression, ExpressionSyntaxError, compile_expression


class SettingsError(Exception):
    """Everything wrong with one settings file, one problem per line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


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


@dataclass
class LoadedSettings:
    settings: Settings
    path: Path
    text_hash: str
    redacted: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    gate_conditions: dict[str, Expression] = field(default_factory=dict)
    trigger_conditions: dict[str, Expression] = field(default_factory=dict)


_SECTIONS: dict[str, Any] = {
    "source": SourceSettings,
    "sinks": dict[str, SinkSettings],
    "transforms": TransformSettings,
    "gates": GateSettings,
    "coalesce": CoalesceSettings,
    "aggregations": AggregationSettings,
    "retry": RetrySettings,
    "checkpoint": CheckpointSettings,
    "landscape": LandscapeSettings,
    "payload_store": PayloadStoreSettings,
}
_LISTS = {"transforms", "gates", "coalesce", "aggregations"}
_REQUIRED = ("source", "sinks")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,38}$")
_RESERVED = {"continue", "fork", "on_success"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_?key|apikey|credential|private_?key)", re.I)
_URL_PASSWORD = re.compile(r"(//[^:/@\s]+:)([^@\s]+)(@)")
# Fingerprints let two runs be compared without storing the secret. Set ELSPETH_FINGERPRINT_KEY in
# production; the development key below only keeps fingerprints stable on one machine.
_DEV_KEY = b"elspeth-development-fingerprint-key"


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> LoadedSettings:
    env = os.environ if environ is None else environ
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError([f"{where}: the settings file does not exist"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError([f"{where}: cannot read the settings file: {e}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise SettingsError([f"{where}: malformed YAML at {at}: {e.problem}"]) from None
    except yaml.YAMLError as e:
        raise SettingsError([f"{where}: malformed YAML: {e}"]) from None
    if not isinstance(raw, dict):
        raise SettingsError([f"{where}: expected a mapping of settings at the top level, found {_kind(raw)}"])
    errors: list[str] = []
    data = _expand(raw, env, "", errors, where)
    settings = _decode(data, errors, where)
    if settings is None or errors:
        raise SettingsError(errors or [f"{where}: invalid settings"])
    loaded = LoadedSettings(
        settings=settings,
        path=path,
        text_hash=hashlib.sha256(msgspec.json.encode(data, order="deterministic")).hexdigest(),
        redacted=_redact(data, env),
    )
    _check(loaded, errors, where)
    if errors:
        raise SettingsError(errors)
    url = settings.landscape.url
    if url and url.startswith("sqlite"):
        shown = _URL_PASSWORD.sub(r"\1***\3", url)
        loaded.warnings.append(
            f"{where}: landscape.url {shown} is a SQLite URL, which is not an audit "
            "store here; using PostgreSQL (the embedded one, or --database / ELSPETH_DATABASE_URL)"
        )
    return loaded


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)  # fmt: skip


def _expand(value: Any, env: Mapping[str, str], path: str, errors: list[str], where: str) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{where}: {path or '(top)'}: environment variable {name} is not set and has no default")
            return ""

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{path}.{k}" if path else str(k), errors, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{path}[{i}]", errors, where) for i, v in enumerate(value)]
    return value


def _msgspec_error(e: msgspec.ValidationError, prefix: str, where: str) -> str:
    message = str(e)
    at = ""
    m = re.search(r" - at `\$(.*)`$", message)
    key = re.search(r" - at `key` in `\$(.*)`$", message)
    if key:
        at = key.group(1)
        message = message[: key.start()] + " for a key"
    elif m:
        at = m.group(1)
        message = message[: m.start()]
    if "got `bool`" in message:
        message += " (YAML reads yes/no/on/off/true/false as booleans: quote them)"
    path = prefix + at
    message = message.replace("Object contains unknown field", "unknown key")
    for name, words in (("array", "a list"), ("object", "a mapping"), ("str", "a string"), ("int", "an integer"),
                        ("float", "a number"), ("bool", "true or false"), ("null", "nothing")):  # fmt: skip
        message = (
            re.sub(rf"(?<![\w'])`?{name}`?(?![\w'])", words, message) if message.startswith("Expected") else message
        )
    message = re.sub(r"`([^`]*)`", r"'\1'", message)
    allowed = ""
    if "unknown key" in message or "missing required field" in message.lower():
        allowed = _allowed_keys(path)
    return f"{where}: {path}: {message}{allowed}"


def _allowed_keys(path: str) -> str:
    section = re.split(r"[.\[]", path)[0]
    target = _SECTIONS.get(section)
    if section == "sinks":
        target = SinkSettings
    if target is None or not isinstance(target, type) or not issubclass(target, msgspec.Struct):
        return ""
    depth = path.count(".") - (1 if section == "sinks" else 0)
    if depth > 0 and not path.endswith(("trigger", "export")):
        return ""
    if path.endswith("trigger"):
        target = TriggerSettings
    elif path.endswith("export"):
        target = ExportSettings
    return "; allowed: " + ", ".join(target.__struct_fields__)


def _decode(data: dict[str, Any], errors: list[str], where: str) -> Settings | None:
    decoded: dict[str, Any] = {}
    for key in data:
        if key not in _SECTIONS:
            errors.append(f"{where}: {key}: unknown key; allowed: {', '.join(_SECTIONS)}")
    for key in _REQUIRED:
        if key not in data:
            errors.append(f"{where}: {key}: required")
    for key, kind in _SECTIONS.items():
        if key not in data:
            continue
        value = data[key]
        if key in _LISTS:
            if value is None:
                decoded[key] = []
                continue
            if not isinstance(value, list):
                errors.append(f"{where}: {key}: expected a list, found {_kind(value)}")
                continue
            items = []
            for i, item in enumerate(value):
                try:
                    items.append(msgspec.convert(item, kind))
                except msgspec.ValidationError as e:
                    errors.append(_msgspec_error(e, f"{key}[{i}]", where))
            decoded[key] = items
            continue
        try:
            decoded[key] = msgspec.convert(value, kind)
        except msgspec.ValidationError as e:
            errors.append(_msgspec_error(e, key, where))
    if errors:
        return None
    return Settings(**decoded)


def _check(loaded: LoadedSettings, errors: list[str], where: str) -> None:
    s = loaded.settings
    seen: dict[str, str] = {}
    nodes: list[tuple[str, str]] = (
        [(f"transforms[{i}]", t.name) for i, t in enumerate(s.transforms)]
        + [(f"gates[{i}]", g.name) for i, g in enumerate(s.gates)]
        + [(f"coalesce[{i}]", c.name) for i, c in enumerate(s.coalesce)]
        + [(f"aggregations[{i}]", a.name) for i, a in enumerate(s.aggregations)]
    )
    for path, name in nodes:
        _check_name(name, f"{path}.name", errors, where)
        if name in seen:
            errors.append(f"{where}: {path}.name: '{name}' is already the name of {seen[name]}; names are unique")
        seen.setdefault(name, path)
    for name in s.sinks:
        _check_name(name, f"sinks.{name}", errors, where)
        if name != name.lower():
            errors.append(f"{where}: sinks.{name}: sink names are lowercase")
        if name in seen:
            errors.append(f"{where}: sinks.{name}: '{name}' is already the name of {seen[name]}; names are unique")
    sinks = set(s.sinks)

    def check_error_target(path: str, target: str | None) -> None:
        if target is not None and target != "discard" and target not in sinks:
            errors.append(f"{where}: {path}: '{target}' is not a sink; allowed: discard, {', '.join(sorted(sinks))}")

    for i, t in enumerate(s.transforms):
        check_error_target(f"transforms[{i}].on_error", t.on_error)
    for i, a in enumerate(s.aggregations):
        check_error_target(f"aggregations[{i}].on_error", a.on_error)
        tr = a.trigger
        if tr.count is None and tr.timeout_seconds is None and tr.condition is None:
            errors.append(
                f"{where}: aggregations[{i}].trigger: at least one trigger is needed; allowed: count, "
                "timeout_seconds, condition"
            )
        if tr.count is not None and tr.count < 1:
            errors.append(f"{where}: aggregations[{i}].trigger.count: {tr.count} is not allowed; allowed: 1 or more")
        if tr.condition is not None:
            try:
                loaded.trigger_conditions[a.name] = compile_expression(tr.condition)
            except ExpressionSyntaxError as e:
                errors.append(f"{where}: aggregations[{i}].trigger.condition (aggregation '{a.name}'): {e}")
    for name, sink in s.sinks.items():
        check_error_target(f"sinks.{name}.on_write_failure", sink.on_write_failure)
    vf = s.source.options.get("on_validation_failure")
    if vf is not None:
        check_error_target("source.options.on_validation_failure", str(vf))
    for i, g in enumerate(s.gates):
        check_error_target(f"gates[{i}].on_error", g.on_error)
        try:
            loaded.gate_conditions[g.name] = compile_expression(g.condition)
        except ExpressionSyntaxError as e:
            errors.append(f"{where}: gates[{i}].condition (gate '{g.name}'): {e}")
        forks = "fork" in g.routes.values()
        if forks and not g.fork_to:
            errors.append(f"{where}: gates[{i}].fork_to: required when a route is 'fork'")
        if g.fork_to and not forks:
            errors.append(f"{where}: gates[{i}].fork_to: only allowed when a route is 'fork'")
    for i, c in enumerate(s.coalesce):
        branches = c.branch_inputs()
        if len(branches) < 2:
            errors.append(f"{where}: coalesce[{i}].branches: at least 2 branches are needed, found {len(branches)}")
        if c.policy == "best_effort" and c.timeout_seconds is None:
            errors.append(f"{where}: coalesce[{i}].timeout_seconds: required for policy best_effort")
        if c.policy == "quorum":
            if c.quorum_count is None:
                errors.append(f"{where}: coalesce[{i}].quorum_count: required for policy quorum")
            elif not 1 <= c.quorum_count <= len(branches):
                errors.append(
                    f"{where}: coalesce[{i}].quorum_count: {c.quorum_count} is not allowed; "
                    f"allowed: 1 to {len(branches)} (the number of branches)"
                )
        if c.merge == "select":
            if c.select_branch is None:
                errors.append(f"{where}: coalesce[{i}].select_branch: required for merge select")
            elif c.select_branch not in branches:
                errors.append(
                    f"{where}: coalesce[{i}].select_branch: '{c.select_branch}' is not a branch; "
                    f"allowed: {', '.join(branches)}"
                )
        if c.timeout_seconds is not None and c.timeout_seconds <= 0:
            errors.append(f"{where}: coalesce[{i}].timeout_seconds: must be more than 0")


def _check_name(name: str, path: str, errors: list[str], where: str) -> None:
    if not _NAME.match(name):
        errors.append(f"{where}: {path}: '{name}' is not allowed; allowed: 1-38 of A-Z a-z 0-9 _ -")
    elif name in _RESERVED or name.startswith("__"):
        errors.append(f"{where}: {path}: '{name}' is reserved")


def fingerprint(value: str, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    key = env.get("ELSPETH_FINGERPRINT_KEY", "").encode() or _DEV_KEY
    return "hmac-sha256:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def _redact(value: Any, env: Mapping[str, str], key: str = "") -> Any:
    """The settings as they may be recorded: secret values replaced by their fingerprints."""
    if isinstance(value, dict):
        return {k: _redact(v, env, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, env, key) for v in value]
    if isinstance(value, str):
        if _SECRET_KEY.search(key):
            return fingerprint(value, env)
        return _URL_PASSWORD.sub(lambda m: m.group(1) + fingerprint(m.group(2), env) + m.group(3), value)
    return value
