"""The audit store's errors. Each message is one line saying what is wrong and what to do."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """An exception's words fit for a one-line error: its first line, else its class's name (a
    driver's message goes on with DETAIL and HINT lines, SQLAlchemy's with the statement)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def quoted(text: str, limit: int = 120) -> str:
    """`text` quoted (its repr) for a message, cut after `limit` characters with its length said: a
    field of a hostile file may be megabytes long, and a one-line error is read by a person."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


DISK_FULL = "53100"  # the server's SQLSTATE for a write that found no space


def connection_lost(sqlstate: str | None) -> bool:
    """Whether a driver's operational error (by its SQLSTATE) is the connection or the server
    gone: no code (the client saw the connection end), connection exceptions (08), the server
    out of disk, memory or connections (53), or shut down or restarting (57P). Other operational
    errors (a statement timeout, a lock not available) are answers of a server still there."""
    return sqlstate is None or sqlstate.startswith(("08", "53", "57P"))


class LandscapeError(Exception):
    """Base of the store's errors."""


class DatabaseUnavailable(LandscapeError):
    """The database cannot be started or reached."""


class SchemaOutdated(LandscapeError):
    """The database schema is older than this ELSPETH."""


class SchemaTooNew(LandscapeError):
    """The database schema was written by a newer ELSPETH."""


class UnknownRun(LandscapeError):
    """No run of that id in this audit store."""


class ConcurrentWriter(LandscapeError):
    """Another process is writing the run."""


class StoreError(LandscapeError):
    """The database refused or failed a statement (other than by being unreachable)."""


class PermissionDenied(StoreError):
    """The role ELSPETH connected as may not do this (see `elspeth db roles`)."""


class VerifierFailed(LandscapeError):
    """A process of the verification itself failed: nothing was concluded about the log."""


class CorruptLog(LandscapeError):
    """The stored events cannot be what ELSPETH wrote."""


class ChainBroken(CorruptLog):
    """The log does not verify (chain, seq, transitions, payloads); `seq` is the first bad event."""

    def __init__(self, run_id: str, seq: int, why: str) -> None:
        super().__init__(f"run {run_id}: the log does not verify at seq {seq}: {why}")
        self.run_id = run_id
        self.seq = seq
