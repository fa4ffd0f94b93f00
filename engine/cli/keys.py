"""`elspeth keys`: the Ed25519 keys that sign run checkpoints."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("keys")
def keys_group() -> None:
    """Signing keys for checkpoints (NAME.key is secret; NAME.pub goes to auditors)."""


def _name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from landscape.keys import KeyFileError, check_name  # here: the crypto library is slow to load

    try:
        check_name(value)
    except KeyFileError as e:
        raise click.BadParameter(str(e)) from None
    return value


@keys_group.command("generate")
@click.argument("name", callback=_name)
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder to write NAME.key and NAME.pub into.")  # fmt: skip
def keys_generate(name: str, directory: Path) -> None:
    """Write a new key: NAME.key (mode 600, the signing key) and NAME.pub (the public key an
    auditor gives to `elspeth verify --public-key`). An existing key is never overwritten."""
    from landscape.keys import KEY_SUFFIX, PUB_SUFFIX, generate_key_files

    signer = generate_key_files(name, directory)  # a KeyFileError is one line and exit 1 at the root group
    click.echo(f"signing key: {directory / (name + KEY_SUFFIX)}  (secret; keep it where only the operator reads it)")
    click.echo(f"public key:  {directory / (name + PUB_SUFFIX)}  {signer.verifier.text()}")
