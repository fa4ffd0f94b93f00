"""Which key signs a run's checkpoints, and where its witness file goes.

The key: `ELSPETH_SIGNING_KEY` (a `.key` file from `elspeth keys generate`), else the settings'
`landscape.signing_key`, else the ELSPETH home's own key (`<home>/keys/default.key`, made on
first use). The witness folder: `ELSPETH_WITNESS_DIR`, else `landscape.witness_dir`, else
`<home>/witness`. Relative paths in settings resolve against the settings file's folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from landscape.embedded import elspeth_home, only_root_can_move
from landscape.keys import default_signer, existing_default_signer, load_named_signer, load_verifier
from landscape.notary import Notary
from landscape.note import Signer, Verifier
from landscape.recorder import Recorder
from statecharts.events import RunCreated


def _from_settings(value: str | None, base: Path | None) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() or base is None else base / path


def named_key(key: str | None, base: Path | None, env: Mapping[str, str] = os.environ) -> tuple[Path, str] | None:
    """The key file a run signs with when one is named, and what named it; None: the home's own."""
    explicit = env.get("ELSPETH_SIGNING_KEY")
    if explicit:
        return Path(explicit), "ELSPETH_SIGNING_KEY"
    path = _from_settings(key, base)
    return None if path is None else (path, "landscape.signing_key")


def named_witness_dir(
    setting: str | None, base: Path | None, env: Mapping[str, str] = os.environ
) -> tuple[Path, str] | None:
    """The witness folder when one is named, and what named it; None: `<home>/witness`."""
    explicit = env.get("ELSPETH_WITNESS_DIR")
    if explicit:
        return Path(explicit).expanduser().absolute(), "ELSPETH_WITNESS_DIR"
    path = _from_settings(setting, base)
    return None if path is None else (path, "landscape.witness_dir")


def signer(home: str | os.PathLike[str] | None, key: str | None = None, base: Path | None = None) -> Signer:
    named = named_key(key, base)
    if named:
        return load_named_signer(named[0])
    _root_may_write(elspeth_home(home))
    return default_signer(elspeth_home(home))


def _root_may_write(home: Path) -> None:
    """As root: nothing is written in a home another user could point elsewhere (the key made on
    first use, the witness files). The fingerprint key and the embedded server check the same; a
    run with ELSPETH_FINGERPRINT_KEY and --database reached neither (a review)."""
    if os.geteuid() == 0:
        only_root_can_move(home)


def existing_signer(home: str | os.PathLike[str] | None) -> Signer | None:
    """The key `ELSPETH_SIGNING_KEY` names, else the home's own when it has one; none is made
    here (`purge` signs with it what it erases: a new key would vouch for nothing anyone holds)."""
    named = named_key(None, None)
    return load_named_signer(named[0]) if named else existing_default_signer(elspeth_home(home))


def verifier(
    home: str | os.PathLike[str] | None,
    public_key: str | None = None,
    *,
    key: str | None = None,
    base: Path | None = None,
) -> Verifier | None:
    """The key to check a run's checkpoints with: the one given, else that of the key a run signs
    with (`signer`, with the settings' `key`), when there is one; none is made here. None: no key
    to check signatures with."""
    if public_key:
        return load_verifier(public_key)
    named = named_key(key, base)
    if named:
        return load_named_signer(named[0]).verifier
    default = existing_default_signer(elspeth_home(home))
    return default.verifier if default else None


def witness_dir(home: str | os.PathLike[str] | None, setting: str | None = None, base: Path | None = None) -> Path:
    named = named_witness_dir(setting, base)
    if named:
        return named[0]
    _root_may_write(elspeth_home(home))
    return elspeth_home(home) / "witness"


def run_witness_folders(
    home: str | os.PathLike[str] | None,
    created: RunCreated | None,
    setting: str | None = None,
    base: Path | None = None,
) -> list[Path]:
    """Every folder a run's witness file may be in, to read them all: the `landscape.witness_dir`
    its first settings named (not a secret, so recorded in clear in RunCreated; resolved against
    the settings file's folder as the writer did), the one `setting` names (the settings a resume
    continues under), and the one `witness_dir` gives now (ELSPETH_WITNESS_DIR, else the home's).
    No environment variable can stand in for the folder the run's settings named. (A folder only
    ELSPETH_WITNESS_DIR named when the run was written is not recorded: it must be set again.)"""
    found: list[Path] = []
    if created is not None:
        landscape = created.settings.get("landscape")
        value = landscape.get("witness_dir") if isinstance(landscape, dict) else None
        recorded = _from_settings(value if isinstance(value, str) else None,
                                  Path(created.working_dir) / Path(created.settings_path).parent)  # fmt: skip
        if recorded is not None:
            found.append(recorded)
    named = _from_settings(setting, base)
    if named is not None:
        found.append(named)
    found.append(witness_dir(home))
    return list(dict.fromkeys(p.absolute() for p in found))


def notary(
    recorder: Recorder,
    home: str | os.PathLike[str] | None,
    *,
    key: str | None = None,
    witness: str | None = None,
    base: Path | None = None,
) -> Notary:
    return Notary(signer(home, key, base), recorder.store_id(), witness_dir(home, witness, base).absolute())
