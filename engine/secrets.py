"""Secrets in settings: recorded only as HMAC fingerprints under a key of the ELSPETH home.

A settings key whose name says it holds a secret (`password`, `token`, ...), and every password
inside a connection string, is replaced by `hmac-sha256:<hex>` before the settings are recorded
with the run. The key is `ELSPETH_FINGERPRINT_KEY`, else a random one made once per home.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from landscape.embedded import elspeth_home
from landscape.fingerprint import ENV as KEY_ENV
from landscape.fingerprint import fingerprint_key as home_key
from landscape.urls import is_secret_name, redact

_KEYS: dict[tuple[str, Path], bytes] = {}  # one read of each home's key file per process


def fingerprint_key(environ: Mapping[str, str] | None = None) -> bytes:
    """ELSPETH_FINGERPRINT_KEY, else the key of the ELSPETH home (`$ELSPETH_HOME`, else
    `./.elspeth`; an external --database keeps its key there too), made on first use — which is
    said once on stderr, since that file must be kept for old fingerprints to stay checkable."""
    # `environ` (the variables a settings file was expanded with) over the process's own.
    env = os.environ if environ is None else {**os.environ, **environ}
    home = elspeth_home(env.get("ELSPETH_HOME") or ".elspeth")
    cache = (env.get(KEY_ENV, ""), home)
    if cache not in _KEYS:
        key, created = home_key(home, env)
        if created is not None:
            print(
                f"elspeth: created the fingerprint key {created} (secrets in settings are recorded only as "
                "HMAC fingerprints under it); back it up with the audit store: without it, old fingerprints "
                "cannot be checked again (see docs/settings.md, 'What is recorded, and secrets')",
                file=sys.stderr,
            )
        _KEYS[cache] = key
    return _KEYS[cache]


def fingerprint(value: str, environ: Mapping[str, str] | None = None) -> str:
    """`hmac-sha256:<hex>` of a secret, keyed by `fingerprint_key`."""
    return "hmac-sha256:" + hmac.new(fingerprint_key(environ), value.encode(), hashlib.sha256).hexdigest()


def is_secret_key(name: str) -> bool:
    """Whether a settings key's value is a secret (recorded only as a fingerprint)."""
    return is_secret_name(name)


def _redact_url(value: str, env: Mapping[str, str]) -> str:
    """Passwords inside a connection string (URL or libpq keywords), as fingerprints."""
    return redact(value, lambda secret: fingerprint(secret, env))


def redact_settings(value: Any, env: Mapping[str, str], secret: bool = False) -> Any:
    """The settings as they may be recorded: secret values replaced by their fingerprints."""
    if isinstance(value, dict):
        return {k: redact_settings(v, env, secret or is_secret_key(str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_settings(v, env, secret) for v in value]
    if secret and value is not None:
        return fingerprint(value if isinstance(value, str) else msgspec.json.encode(value).decode(), env)
    if isinstance(value, str):
        return _redact_url(value, env)
    return value
