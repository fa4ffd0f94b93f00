"""Checkpoints of a run's Merkle tree in the C2SP tlog-checkpoint form, signed as notes.

The note text is exactly:

    <origin>\\n<tree size in decimal>\\n<base64 of the 32-byte root>\\n[<extension line>\\n]...

ELSPETH's origin names the store and the run: `elspeth/<store id>/<run id>` (`run_origin`), so a
checkpoint of one run can never be taken for one of another run or another store.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from landscape.errors import quoted
from landscape.merkle import HASH_SIZE
from landscape.note import NoteError, Signer, Verifier, b64decode_strict, open_note

# ASCII digits, no sign, no leading zero; at most 19 (a signed 64-bit count): a note's size is
# read before its signature is checked, and Python refuses to read an int of over 4,300 digits.
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")
# A checkpoint ELSPETH signs has three lines; extension lines, which it writes none of, up to this.
MAX_CHECKPOINT_LINES = 100
_ORIGIN_PREFIX = "elspeth/"


# What a signed checkpoint of 0 events is, wherever one is read (a kept one, a witness file's, an
# export's): it shows nothing, and ELSPETH makes none, so only the key's holder can have.
EMPTY_LOG = (
    "signs an empty log (0 events), which every log extends, so it shows nothing of what the log held; ELSPETH "
    "signs none such (a run's log holds its first event from the start): its key's holder made it"
)


class CheckpointError(NoteError):
    """A checkpoint is malformed, unsigned, or of another log."""


def _check_origin_part(value: str, what: str) -> None:
    if not value:
        raise CheckpointError(f"the {what} in an origin must not be empty")
    bad = next((c for c in value if c.isspace() or c in "+/" or not c.isprintable()), None)
    if bad is not None:
        raise CheckpointError(f"the {what} {quoted(value)} holds {bad!r}, which an origin part cannot")


def run_origin(store_id: str, run_id: str) -> str:
    """`elspeth/<store id>/<run id>`: the origin line of a run's checkpoints."""
    _check_origin_part(store_id, "store id")
    _check_origin_part(run_id, "run id")
    return f"{_ORIGIN_PREFIX}{store_id}/{run_id}"


def parse_run_origin(origin: str) -> tuple[str, str]:
    """(store id, run id) of an origin made by `run_origin`."""
    parts = origin.split("/", 3)  # (at most four parts: a hostile origin may hold millions of '/')
    if len(parts) != 3 or parts[0] + "/" != _ORIGIN_PREFIX:
        raise CheckpointError(f"origin {quoted(origin)} is not elspeth/<store id>/<run id>")
    _check_origin_part(parts[1], "store id")
    _check_origin_part(parts[2], "run id")
    return parts[1], parts[2]


@dataclass(frozen=True)
class Checkpoint:
    """A claim that the log `origin` had `size` leaves with tree hash `root`."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or any(c.isspace() or c == "+" or not c.isprintable() for c in self.origin):
            raise CheckpointError(f"origin {quoted(self.origin)} must be non-empty, without spaces or '+'")
        if self.size < 0:
            raise CheckpointError(f"tree size {self.size} is negative")
        if len(self.root) != HASH_SIZE:
            raise CheckpointError(f"a root hash is {HASH_SIZE} bytes, not {len(self.root)}")
        for line in self.extensions:
            if not line or "\n" in line or not line.isprintable():
                raise CheckpointError(f"extension line {quoted(line)} must be one non-empty line of text")

    def text(self) -> str:
        """The note text: origin, size, root, extension lines, each ending in a newline."""
        lines = (self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions)
        return "".join(f"{line}\n" for line in lines)

    def sign(self, signer: Signer) -> str:
        """The signed checkpoint note."""
        return signer.sign(self.text())


def parse_checkpoint(text: str) -> Checkpoint:
    """The checkpoint in a note's text (see `Checkpoint.text`); refuses any other spelling."""
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint text does not end with a newline")
    count = text.count("\n")  # (counted before the text is split: a hostile one may hold millions)
    if count > MAX_CHECKPOINT_LINES:
        raise CheckpointError(f"a checkpoint has {count} lines, more than {MAX_CHECKPOINT_LINES}")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(f"a checkpoint has origin, size and root lines; this one has {len(lines)} line(s)")
    for i, line in enumerate(lines, start=1):
        if not line:
            raise CheckpointError(f"checkpoint line {i} is empty")
    origin, size, root, *extensions = lines
    if not _SIZE.fullmatch(size):
        raise CheckpointError(
            f"checkpoint tree size {quoted(size, 20)} is not a decimal number of at most 19 digits without leading "
            "zeros"
        )
    raw = b64decode_strict(root, "checkpoint root hash")
    return Checkpoint(origin, int(size), raw, tuple(extensions))


def open_checkpoint(note: str | bytes, verifier: Verifier, *, origin: str | None = None) -> Checkpoint:
    """The checkpoint in a signed note, once `verifier`'s signature verifies and, if given, its
    origin is `origin`; CheckpointError (or NoteError) saying why otherwise."""
    opened = open_note(note, verifier)
    checkpoint = parse_checkpoint(opened.text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint is of {quoted(checkpoint.origin)}, not {quoted(origin)}")
    return checkpoint
