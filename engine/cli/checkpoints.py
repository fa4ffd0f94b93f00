"""The signed checkpoints a reading command checks a run's log against (`replay`, `explain`, and
the operator's `export`, `prove`, `checkpoint`): the store's copies, the witness file's, and the
key their signatures are checked with. Without them a log cut short could not be told apart from
a log that ended there."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from engine.cli.errors import ElspethCliError
from engine.cli.visible import say

# The store and the signing library are imported by the commands that use them, so that
# `elspeth --help` (which imports the commands' modules) starts fast.
if TYPE_CHECKING:
    from landscape.notary import Witnessed
    from landscape.note import Verifier
    from landscape.postgres import PostgresRecorder

key_option = click.option("--public-key", "public_key", type=click.Path(),
                          help="The .pub of the run's signing key [the key this home signs with].")  # fmt: skip
witness_option = click.option("--witness", type=click.Path(),
                              help="The run's witness file [in the folder the run's settings named, "
                                   "else <home>/witness/RUN_ID.checkpoints].")  # fmt: skip


@dataclass(frozen=True)
class Checkpoints:
    """A run's signed checkpoints as found: in the store, in its witness file, and the key to
    check their signatures with (None: this home has none and none was given)."""

    stored: list[Witnessed]
    witnessed: list[Witnessed]
    witness_files: list[Path]  # where they were looked for
    key: Verifier | None

    @property
    def where(self) -> str:
        return " or ".join(str(p) for p in self.witness_files)

    @property
    def all(self) -> list[Witnessed]:
        return [*self.stored, *self.witnessed]

    def require(self, run_id: str) -> None:
        """Refuse a run with none (ElspethCliError)."""
        if not self.all:
            raise ElspethCliError(
                f"run {run_id} has no signed checkpoint, in the store or in {self.where}: "
                "a cut-off tail could not be told apart from the end of the log"
            )

    def covering(self, events: int) -> list[Witnessed]:
        """Those of the first `events` events, for a reader that stops before the log's end."""
        return [cp for cp in self.all if cp.size <= events]

    def summary(self, checked: list[Witnessed]) -> str:
        signed = (
            f"signatures checked with {self.key.label}"
            if self.key
            else "signatures NOT checked (no key: give --public-key)"
        )
        newest = max((cp.size for cp in checked), default=0)
        # (Of those checked: `replay --as-of` checks those of the events it reads; "the newest
        # covers 3641 events" read as the store's newest, a larger one beside it.)
        which = "the newest" if len(checked) == len(self.all) else f"{len(checked)} checked, the newest of them"
        return (
            f"checkpoints: {len(self.stored)} in the store, {len(self.witnessed)} in {self.where}, {which} "
            f"covers {newest} events; Merkle roots match; {signed}"
        )

    def as_json(self, checked: list[Witnessed]) -> dict[str, Any]:
        return {
            "store": len(self.stored),
            "witness": len(self.witnessed),
            "newest_size": max((cp.size for cp in checked), default=None),
            "signatures_checked": bool(checked) and self.key is not None,
        }


def read_checkpoints(
    recorder: PostgresRecorder,
    run_id: str,
    home: str,
    *,
    witness: str | None,
    public_key: str | None = None,
    key: Verifier | None = None,
) -> Checkpoints:
    """Read them before the log: on a live run both only grow, so none can claim more events than
    a later read finds. The key: `key`, else that of `public_key`, else the one this home signs
    with; a checkpoint signed by another than this home's key is refused with a hint (a run signed
    with a key from its settings, or before the home's key changed). A witness file given that is
    not there is refused; a missing default one is warned about (the store's copies are then all
    there is, and a superuser can change both them and the log)."""
    from engine import signing
    from landscape.notary import read_run_witness, read_witness, witness_path
    from landscape.note import NoteError, parse_note

    if witness and not Path(witness).is_file():
        given = Path(witness)
        what = (
            "no such file"
            if not given.exists()
            else "a folder, not a witness file"
            if given.is_dir()
            else "not a regular file (a FIFO or a device), not a witness file"
        )
        raise ElspethCliError(f"--witness {witness}: {what}")
    # By default the witness file where the run's writer put it: its settings may name the folder,
    # as its first event records. That event is read before it is verified, but every checkpoint
    # covers it: a superuser who changed it to point elsewhere breaks every root (or, deleting the
    # store's checkpoints too, leaves none, which `require` refuses).
    if witness:
        files, witnessed = [Path(witness)], read_witness(Path(witness), run_id)
    else:
        # each folder is checked too: one another account could swap may hide checkpoints
        folders = signing.run_witness_folders(home, recorder.run_created(run_id))
        files = [witness_path(folder, run_id) for folder in folders]
        witnessed = [cp for folder in folders for cp in read_run_witness(folder, run_id)]
    found = Checkpoints(recorder.checkpoints(run_id), witnessed, files, key or signing.verifier(home, public_key))
    if found.key is not None and key is None and public_key is None:
        for cp in found.all:
            with contextlib.suppress(NoteError):  # verification names what is wrong with the note
                signers = [s.label for s in parse_note(cp.note).signatures]
                if found.key.label not in signers:
                    raise ElspethCliError(
                        f"run {run_id}: the checkpoint of {cp.size} events ({cp.where}) is signed by "
                        f"{', '.join(signers)}, not by this home's key {found.key.label}: give the run's public key "
                        "with --public-key KEY.pub (and its witness file with --witness, if it is elsewhere)"
                    )
    if found.stored and not found.witnessed:
        what = "no witness file at" if not any(f.exists() for f in files) else "no checkpoint of this run in"
        say(f"elspeth: warning: {what} {found.where}: the store's checkpoints only")
    return found
