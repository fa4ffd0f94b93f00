"""What an operator hands an auditor: `elspeth export`, `elspeth prove` and `elspeth checkpoint`.
(The auditor's side, `elspeth verify`, is `engine.cli.verify`, which needs no database.)"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from engine.cli.checkpoints import key_option, read_checkpoints, witness_option
from engine.cli.common import database_from_ctx, existing_store, home_from_ctx, warn_reinstated
from engine.cli.errors import ElspethCliError
from engine.cli.verify import say_unsigned, unsigned_erasures_option
from engine.cli.visible import say, write_bytes
from landscape.errors import UnknownRun
from landscape.role_names import Role
from landscape.visible import one_line

# The store, the driver and the signing library are imported in the commands that use them, so
# that `elspeth --help` (which lists this module's commands) starts fast.
if TYPE_CHECKING:
    from landscape.notary import Witnessed
    from landscape.note import Verifier
    from landscape.postgres import PostgresRecorder


class _Temporary(io.FileIO):
    """The file being written, which remembers a write (or sync) that failed: the code writing
    into it may let the OSError through or wrap it, and the message names the file either way."""

    failed: OSError | None = None

    def write(self, b: Any, /) -> int:
        try:
            return super().write(b)
        except OSError as e:
            self.failed = e
            raise

    def sync(self) -> None:
        try:
            os.fsync(self.fileno())
        except OSError as e:
            self.failed = e
            raise


@contextlib.contextmanager
def new_file(path: Path) -> Iterator[IO[bytes]]:
    """Write `path`, which must not exist, all or nothing: into a temporary file beside it, linked
    into place only once everything was written (link() refuses to replace a file that appeared
    meanwhile). On any error the temporary file goes and `path` is never created; a write that
    fails (a full disk) is one line naming `path`. Mode 0600: an export or a bundle holds row data
    and its salts, which the store shows its owner alone."""
    if str(path) == "-":  # (it made a file named "-", where a user asked for standard output)
        raise ElspethCliError(
            "-o -: this is written to a file, all or nothing, not to standard output; give the file's path"
        )
    if path.exists() or path.is_symlink():
        raise ElspethCliError(
            f"{one_line(path)} already exists; choose another name (this command never overwrites a file)"
        )
    if not path.parent.is_dir():
        raise ElspethCliError(f"{one_line(path.parent)} is not an existing folder")
    for left in _remove_abandoned(path):
        say(f"elspeth: removed {one_line(left)}, left by an earlier command writing {one_line(path)} that was killed")
    tmp = _temporary(path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise ElspethCliError(f"cannot write {one_line(path)}: {e.strerror}") from None
    try:
        # Held while the file is written (until it is closed, just before it is linked into
        # place): a later export into the same name tells by it that this one is still writing,
        # even from another machine sharing the folder (`_remove_abandoned`).
        with contextlib.suppress(OSError):  # (a file system without locks: it is then never taken for abandoned)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        raw = _Temporary(fd, "wb")
        try:
            with io.BufferedWriter(raw, buffer_size=1 << 20) as out:
                yield out
                out.flush()
                raw.sync()
        except Exception as e:
            if raw.failed is None:
                raise
            raise ElspethCliError(f"cannot write {one_line(path)}: {raw.failed.strerror or e}") from None
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ElspethCliError(f"{one_line(path)} already exists; choose another name") from None
        except OSError as e:
            raise ElspethCliError(f"cannot write {one_line(path)}: {e.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _temporary(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.{pid}.tmp")


def _remove_abandoned(path: Path) -> list[Path]:
    """The temporary files of exports into `path` that were killed (SIGKILL leaves no time to
    remove them), removed: each holds a whole export's row data so far. One is taken as abandoned
    only when both its process is gone here and no process holds its lock: a PID alone could be
    another machine's (a shared folder) or another container's, whose export is still writing
    it. Only a regular file of this user's is taken (never a link, a FIFO, or another user's, also
    under root); one that cannot be opened or locked (a lock held) is left alone."""
    removed: list[Path] = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if not pid.isdigit() or tmp != _temporary(path, int(pid)) or _alive(int(pid)):
            continue
        try:  # (non-blocking: a FIFO of that name, with no writer, would hold the open for good)
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_uid != os.geteuid():
                continue  # no file an export of this user writes
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tmp.unlink()  # under the lock: no export can have taken the file up meanwhile
        except OSError:
            continue
        finally:
            os.close(fd)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (EPERM): alive
        return True
    return True


def _key(ctx: click.Context, public_key: str | None) -> Verifier:
    from engine import signing

    key = signing.verifier(home_from_ctx(ctx), public_key)
    if key is None:
        existing_store(ctx)  # a home where nothing ran has no key either: that is the mistake to name
        raise ElspethCliError("no key to name as the run's signer: give its public key with --public-key KEY.pub")
    return key


def _checkpoints(
    recorder: PostgresRecorder, run_id: str, home: str, witness: str | None, key: Verifier
) -> list[Witnessed]:
    if not recorder.run_exists(run_id):
        raise UnknownRun(f"no run {one_line(run_id)} in {recorder.db.describe()} (see `elspeth runs`)")
    from landscape.export import signed_checkpoints

    found = read_checkpoints(recorder, run_id, home, witness=witness, key=key)
    return signed_checkpoints(found.stored, found.witnessed, key)


def _a_file(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """`-o -` is a command line to fix (exit 2), said before any store is opened: an export or a
    bundle is written to a file all or nothing, never to standard output. Told apart as typed:
    as a Path, `./-` (a file named '-') reads '-' too."""
    if value == "-":
        raise click.BadParameter(
            "'-': this is written to a file, all or nothing, not to standard output; give the file's path"
        )
    return None if value is None else Path(value)


# (an export and a bundle: one file, written all or nothing)
output_file_option = click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), callback=_a_file, help="The file to write.",
)  # fmt: skip


@click.command("export")
@click.argument("run_id")
@output_file_option
@click.option("--no-payloads", is_flag=True, help="Leave row data out: the events keep only its commitments.")
@key_option
@witness_option
@unsigned_erasures_option
@click.pass_context
def export_cmd(
    ctx: click.Context, run_id: str, output: Path, no_payloads: bool, public_key: str | None, witness: str | None,
    unsigned_erasures: bool,
) -> None:  # fmt: skip
    """Write one self-contained file an auditor verifies offline (`elspeth verify`): the run's
    events as stored, their row payloads, every signed checkpoint, the erasure records and the
    signing key's public text. docs/verification.md describes the format."""
    from landscape.checkpoint import run_origin
    from landscape.export import write_export
    from landscape.postgres import PostgresRecorder

    home = home_from_ctx(ctx)
    key = _key(ctx, public_key)
    with new_file(output) as out, database_from_ctx(ctx, role=Role.AUDITOR) as db:
        recorder = PostgresRecorder(db)
        checkpoints = _checkpoints(recorder, run_id, home, witness, key)
        origin = run_origin(recorder.store_id(), run_id)
        written = write_export(
            recorder, run_id, out, origin=origin, key=key, checkpoints=checkpoints, payloads=not no_payloads,
            unsigned_erasures=unsigned_erasures,
        )  # fmt: skip
        warn_reinstated(recorder, run_id)
    what = "commitments only" if no_payloads else f"{written.payloads} row payload(s)"
    click.echo(
        f"exported run {run_id} to {one_line(output)}: {written.events} events, {what}, {written.erased} erasure record(s), "
        f"{written.checkpoints} signed checkpoint(s) (key {key.label})"
    )
    say_unsigned(written.unsigned)


@click.command("prove")
@click.argument("run_id")
@click.option("--seq", type=click.IntRange(min=0), help="Prove this one event.")
@click.option("--row", "row_number", type=click.IntRange(min=1),
              help="Prove every event of this source row's tokens; rows count from 1, as in "
                   "`explain --row`, `purge --row` and the quarantine records' __row_number__.")  # fmt: skip
@output_file_option
@click.option("--no-payloads", is_flag=True, help="Leave the row data (and its salts) out.")
@click.option("--checkpoint", "kept", type=click.Path(path_type=Path, dir_okay=False),
              help="A checkpoint of the run the auditor kept (`elspeth checkpoint`): add the consistency "
                   "proof from it, which `elspeth verify --checkpoint` asks for.")  # fmt: skip
@key_option
@witness_option
@unsigned_erasures_option
@click.pass_context
def prove_cmd(
    ctx: click.Context, run_id: str, seq: int | None, row_number: int | None, output: Path, no_payloads: bool,
    kept: Path | None, public_key: str | None, witness: str | None, unsigned_erasures: bool,
) -> None:  # fmt: skip
    """Write an inclusion proof bundle: the event (or the row's events) in full, each with its
    audit path to the newest signed checkpoint, and the row data they reference. An auditor
    checks it with `elspeth verify` without the rest of the run; with `--checkpoint`, also that
    the log it is proved in extends the one the auditor saw."""
    if (seq is None) == (row_number is None):
        raise click.UsageError("give exactly one of --seq N or --row N")
    row_index = None if row_number is None else row_number - 1  # the log's 0-based row_index
    from landscape.audit import read_kept_checkpoint
    from landscape.checkpoint import run_origin
    from landscape.export import build_proof, encode_bundle
    from landscape.postgres import PostgresRecorder

    home = home_from_ctx(ctx)
    key = _key(ctx, public_key)
    old = read_kept_checkpoint(kept, key) if kept is not None else None
    with new_file(output) as out, database_from_ctx(ctx, role=Role.AUDITOR) as db:
        recorder = PostgresRecorder(db)
        newest = _checkpoints(recorder, run_id, home, witness, key)[-1]
        origin = run_origin(recorder.store_id(), run_id)
        bundle = build_proof(
            recorder, run_id, newest, origin=origin, key=key, seq=seq, row=row_index, payloads=not no_payloads,
            kept=old, unsigned_erasures=unsigned_erasures,
        )  # fmt: skip
        out.write(encode_bundle(bundle))
        warn_reinstated(recorder, run_id)
    click.echo(
        f"wrote {one_line(output)}: {len(bundle.events)} event(s) of run {run_id} proved in its signed tree of {newest.size} "
        f"events"
        + ("" if no_payloads else f", with {len(bundle.payloads)} row payload(s)")
        + ("" if old is None else f"; extends the checkpoint given ({old.size} events)")
    )
    say_unsigned(len(bundle.erased) - len(bundle.seals))


@click.command("checkpoint")
@click.argument("run_id")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the note to this file [standard output, also `-`].")  # fmt: skip
@key_option
@witness_option
@click.pass_context
def checkpoint_cmd(
    ctx: click.Context, run_id: str, output: Path | None, public_key: str | None, witness: str | None
) -> None:
    """The run's newest signed checkpoint, exactly as signed. An auditor who keeps it can later
    prove that an export extends it: `elspeth verify FILE --checkpoint IT`."""
    from landscape.postgres import PostgresRecorder

    home = home_from_ctx(ctx)
    key = _key(ctx, public_key)
    with database_from_ctx(ctx, role=Role.AUDITOR) as db:
        newest = _checkpoints(PostgresRecorder(db), run_id, home, witness, key)[-1]
    # Byte for byte, whatever the terminal's encoding: a signed note changed is no note.
    if output is None or str(output) == "-":
        write_bytes(newest.note.encode())
        return
    with new_file(output) as out:
        out.write(newest.note.encode())
    click.echo(f"wrote {one_line(output)}: checkpoint of {newest.size} events of run {run_id}, signed by {key.label}")
