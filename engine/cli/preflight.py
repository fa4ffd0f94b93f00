"""Before anything is created: the files a pipeline reads exist (its input, the signing key it
names), a CSV input's header is one the run can use, and the places it writes can take files
(the sinks' folders, the witness folder).

`validate` and `run` call this once the settings are known to be right, before any audit store is
opened or created, so a mistyped input path costs one line and leaves nothing behind (no store,
no run). Settings problems are exit 2 (fix the file); these are exit 1: the settings may well be
right and the world not yet as they say (an input not delivered, an output folder not made).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from engine.checks import signing_key, witness_folder
from engine.cli.errors import ElspethCliError
from engine.orchestrator import Pipeline
from engine.plugins.database_sink import DatabaseSink
from engine.plugins.db_urls import sqlite_file
from engine.plugins.protocol import PluginError
from engine.plugins.sinks import CsvSink, JsonSink
from engine.plugins.sources import CsvSource, JsonSource
from landscape.embedded import elspeth_home
from landscape.keys import KeyFileError, check_default_key, load_named_signer
from landscape.owner import mistrust_new_folder


def path_problems(pipeline: Pipeline, environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per input that is not a readable regular file (or a CSV input whose header
    the run would refuse), per output folder that is not
    there, per sink file that is a folder or a FIFO, for a signing key that is not one or that
    others could read or swap, and for a witness folder that cannot take files or that the run's
    first checkpoint would refuse (another user's, or in a folder others can write). Plugins that read or write a `path` are checked (the
    built-in file plugins)."""
    env = os.environ if environ is None else environ
    where = pipeline.loaded.path
    problems: list[str] = []
    source_path = getattr(pipeline.source, "path", None)
    if isinstance(source_path, Path):
        why = _unreadable(source_path)
        if why:
            problems.append(f"{where}: source.options.path: the input {source_path} {why}{_relative(source_path)}")
        elif isinstance(pipeline.source, CsvSource | JsonSource):
            # A header the run cannot use (a name twice, one empty, a quote left open), or a JSON
            # document that holds no array of records, would otherwise stop the run once it is
            # recorded: a failed run that invites a resume. Of a CSV file, only the header line is
            # read (and the lines skip_rows skips), never the rows.
            try:
                pipeline.source.check_header()
            except PluginError as e:
                problems.append(f"{where}: source.options.path: {e.message}")
    for name, sink in sorted(pipeline.nodes.sinks.items()):
        path, setting = getattr(sink, "path", None), f"sinks.{name}.options.path"
        if isinstance(sink, DatabaseSink):  # a SQLite file is made, or opened, like a sink's file
            path, setting = sqlite_file(sink.url), f"sinks.{name}.options.url"
        if isinstance(path, Path):
            folder = path.parent
            if not folder.is_dir():
                what = "is not a folder" if folder.exists() else "does not exist"
                problems.append(f"{where}: {setting}: the folder {folder} of {path} {what}{_relative(path)}")
            elif (kind := _not_writable_file(path)) is not None:
                problems.append(
                    f"{where}: {setting}: {path} {kind}; allowed: a regular file, or a new one (or a device such as "
                    "/dev/null)"
                )
            elif (why := _cannot_write(path)) is not None:
                problems.append(
                    f"{where}: {setting}: {path} {why}{_relative(path)}; allowed: a file this user can write, or a "
                    "new one in a folder that takes files"
                )
            elif (why := _cannot_append(sink, path)) is not None:
                problems.append(f"{where}: {setting}: {why}")
            elif isinstance(sink, DatabaseSink) and not _sqlite_or_new(path):
                # Else the run is recorded, then fails at its first write ("file is not a database")
                problems.append(
                    f"{where}: {setting}: {path} holds something other than a SQLite database; allowed: a SQLite "
                    "database file, or a new one"
                )
    key = signing_key(pipeline.loaded, env)
    if key is None:
        try:  # the home's own key, as the run's first checkpoint would take it (made there if none)
            check_default_key(elspeth_home(env.get("ELSPETH_HOME")))
        except KeyFileError as e:
            problems.append(f"{where}: the home's signing key: {e} (or name one: landscape.signing_key)")
    else:
        try:
            load_named_signer(key[0])  # as the run loads it, with the same checks
        except KeyFileError as e:
            says = str(e)
            if "; allowed:" not in says:  # not said already: what it is not
                says += "; allowed: a .key file made by `elspeth keys generate`"
            problems.append(f"{where}: {key[1]}: {says} (or no signing_key: the ELSPETH home's own key)")
    witness = witness_folder(pipeline.loaded, env)
    if witness is not None:
        why = _cannot_hold_files(witness[0])
        if why:
            problems.append(
                f"{where}: {witness[1]}: the witness folder {witness[0]} {why}; allowed: a folder this user can "
                "write, or one that can be made (or no witness_dir: <home>/witness)"
            )
        elif why := mistrust_new_folder(witness[0].absolute()):
            # What the run's first checkpoint would refuse (landscape.notary), asked before the
            # run is recorded: refused there, it would leave a run that can only be resumed.
            problems.append(
                f"{where}: {witness[1]}: the witness folder {witness[0]}: {why}; allowed: a folder of yours that "
                "nobody else can write, in a folder nobody else can write (or no witness_dir: <home>/witness)"
            )
    return problems


def check_paths(pipeline: Pipeline) -> None:
    problems = path_problems(pipeline)
    if problems:
        raise ElspethCliError("\n".join(problems) + ("\nnothing was run" if len(problems) > 1 else "; nothing was run"))


def _cannot_append(sink: object, path: Path) -> str | None:
    """Why a file sink in append mode cannot append to the file there (its last line unended, a
    JSON document that is not an array, another byte order), as its opening at the run would
    say: found here, before a run is recorded, rather than as a failed run inviting a resume.
    Opening writes nothing (a sink's file is written from its first flush)."""
    if not isinstance(sink, CsvSink | JsonSink) or sink.mode != "append":
        return None
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return None
        sink.open("", None)
    except OSError:
        return None  # (the run says what it is)
    except PluginError as e:
        return e.message
    finally:
        sink.release()
    return None


def _relative(path: Path) -> str:
    """For a relative path, where it resolves: the folder elspeth runs in, not the settings
    file's (and `~` is a folder's name there, not the home)."""
    if path.is_absolute():
        return ""
    home = "; `~` is not expanded" if path.parts[:1] == ("~",) else ""
    return f" (relative to the folder elspeth runs in, {Path.cwd()}{home})"


def _unreadable(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    except ValueError:  # a NUL in the path (refused with the settings; never a traceback here)
        return "cannot be a file's name (it holds a NUL character)"
    if not stat.S_ISREG(st.st_mode):
        # Only regular files: opening a FIFO or a device to test it could block or consume it.
        return "is not a regular file"
    if not os.access(path, os.R_OK):
        return "is not readable (permission denied)"
    return None


def _not_writable_file(path: Path) -> str | None:
    """Why a sink cannot write `path` as its file: a folder, or a FIFO or socket (a sink hashes
    and cuts what it wrote to resume it, which a pipe cannot be; opening one to test it could
    block). A character device (/dev/null) is written without either and is allowed."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return None  # not there yet (made at the first write), or refused elsewhere
    if stat.S_ISDIR(mode):
        return "is a folder"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "is a socket"
    return None


def _cannot_write(path: Path) -> str | None:
    """Why this user cannot write a sink's file there (the file, or its folder for a new one):
    a read-only file system (refused even to root) or the permissions. Else the run, recorded,
    failed at its first flush."""
    target = path if path.exists() else path.parent
    try:
        if os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
            if target == path:
                return None
            # access() says yes to root everywhere, and /proc takes no file whatever it says (a
            # run was recorded, then failed at its first flush: a review): asked by making one.
            why = _cannot_hold_files(target)
            return None if why is None else f"cannot be made: its folder {target} {why}"
        readonly = os.statvfs(target).f_flag & os.ST_RDONLY
    except (OSError, ValueError):
        return None  # (the run says what it is)
    what = "is on a read-only file system" if readonly else "cannot be written by this user (permission denied)"
    return what if target == path else f"cannot be made: its folder {what}"


def _cannot_hold_files(folder: Path) -> str | None:
    """Why the run could not write its witness file into `folder` (made with its parents at the
    first checkpoint), or None. A failure there comes after the run is recorded, so it is asked
    here, before."""
    try:
        if folder.exists():
            if not folder.is_dir():
                return "is not a folder"
            if not os.access(folder, os.W_OK | os.X_OK):
                return "cannot be written (permission denied)"
            # As below: access() says yes to root everywhere, and /proc takes no file whatever
            # it says (a run was recorded, then stopped at its first checkpoint: a review).
            try:
                fd, probe = tempfile.mkstemp(prefix=".elspeth-probe-", dir=folder)
            except OSError as e:
                return f"cannot take a file: {e.strerror or e}"
            os.close(fd)
            os.unlink(probe)
            return None
        parent = folder.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return f"cannot be made: {parent} is not a folder"
        # Whether a folder can be made there is only known by making one: access() says yes to
        # root everywhere, and some file systems (/proc) refuse whatever the permissions say.
        # The probe is removed at once; the witness folder itself is made by the run.
        probe = tempfile.mkdtemp(prefix=".elspeth-probe-", dir=parent)
        os.rmdir(probe)
    except OSError as e:
        return f"cannot be made: {e.strerror or e}"
    except ValueError:
        return "cannot be a folder's name (it holds a NUL character)"
    return None


def _sqlite_or_new(path: Path) -> bool:
    """Whether a SQLite sink's file is absent, empty (SQLite makes a database in it) or a device,
    or begins as every SQLite database does."""
    try:  # (without waiting: a FIFO swapped in meanwhile must not hold the check up)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return True  # absent, or what cannot be read, which the run says in its own words
    try:
        head = os.read(fd, 16) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    finally:
        os.close(fd)
    return head in (b"", b"SQLite format 3\x00")
