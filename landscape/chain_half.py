"""The chain half of a long log's verification, in a second process (`ChainHalf`).

This process reads the log (from the store, or from an export) and hands the events, a page at
a time, to a child that runs the chain checks (`landscape.verify.check_chain`) while this process
decodes and folds them: two cores check one read. The child never speaks to the database: it
imports no driver, and what it checks is exactly what this process folded (the bytes of each
page, `encode_page`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from collections.abc import Collection, Iterable, Iterator
from multiprocessing.connection import Connection

from landscape.child import die_with, widen_pipe
from landscape.records import StoredEvent
from landscape.verify import ChainCheck, ReadDigest, check_chain, decode_page, encode_page, gc_paused

# Logs at least this long are verified by two processes. Starting the second costs about 0.3 s
# (a new interpreter importing the verifier); it saves about 3 µs per event.
SPLIT_AT = 200_000
# Events per page sent to the child: about 350 KB, which the pipe (1 MiB) takes while the child
# is at the page before (of 1,000, 2,000 and 5,000, the fastest).
_PAGE = 1000
# A page of events whose size only their lines bound (`tap`'s `weigh`) ends at this many bytes.
_PAGE_BYTES = 4 << 20


class ChainHalf:
    """The child that runs the chain half on the events `tap` hands it, and this process's side.

    A new interpreter, not a fork: the process may have threads, whose locks a fork would copy as
    they are; nor multiprocessing's spawn, which imports the caller's main script again in the
    child (a script without a `__main__` guard would run twice). It starts isolated (`-I`: no
    working directory, no PYTHON* variables, no user site on its path) and then takes this
    process's module path as it is, so it runs the same code this process runs and nothing a
    directory or a variable slipped in ahead of it. Its path and arguments go down its stdin, the
    pages down a pipe of their own, its one answer comes up a third. It is in a session of its own
    (Ctrl-C reaches this process, which decides), ends with this process (`die_with`), and is
    killed when the block ends before it answered. When it cannot start, or fails, `result` is
    None.

    This process writes each page itself, small enough for the pipe to take at once while the
    child works on the one before. (A thread that sent them, so that this process would never
    wait on the pipe, made an export's check 1.3 s slower than one pass: it needed the
    interpreter's lock after each write, which the folding thread gives up only every 5 ms.)"""

    _BOOT = (
        "import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); import landscape.chain_half as m; m.main()"
    )

    def __init__(self, run_id: str, roots_at: Collection[int]) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._answers: Connection | None = None
        self._pages: Connection | None = None
        self._fed = False  # the whole log was handed on (`tap`)
        self._broken = False  # a write failed: the child ended
        self._taken: ReadDigest | None = None  # what `tap` handed on, when no child started
        message = pickle.dumps(sys.path, protocol=pickle.HIGHEST_PROTOCOL) + pickle.dumps(
            (run_id, sorted(roots_at), os.getpid()), protocol=pickle.HIGHEST_PROTOCOL
        )
        ends: list[int] = []  # the child's ends of the pipes, closed here once it has them
        try:
            answers, answer_end = os.pipe()
            self._answers = Connection(answers, writable=False)
            ends.append(answer_end)
            page_end, pages = os.pipe()
            self._pages = Connection(pages, readable=False)
            ends.append(page_end)
            widen_pipe(pages)
            if sys.executable:  # (none in an embedding: `result` says None)
                self._process = subprocess.Popen(
                    [sys.executable, "-I", "-c", self._BOOT, str(answer_end), str(page_end)],
                    stdin=subprocess.PIPE,
                    pass_fds=(answer_end, page_end),
                    start_new_session=True,
                )
        except OSError:  # no pipe (no descriptor left), or no child: `result` says None
            pass
        finally:
            for fd in ends:
                os.close(fd)
        try:
            if self._process is not None and self._process.stdin is not None:
                with contextlib.suppress(BrokenPipeError):  # it ended already: `result` says None
                    self._process.stdin.write(message)
                with contextlib.suppress(BrokenPipeError):
                    self._process.stdin.close()
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> ChainHalf:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
        for conn in (self._pages, self._answers):
            if conn is not None:
                conn.close()

    def tap(self, events: Iterable[StoredEvent], *, weigh: bool = False) -> Iterator[StoredEvent]:
        """The `events`, each handed on as it comes, and behind them to the child: every `_PAGE` of
        them, once handed on, go to it as one page. So whatever this process checks between
        events (an export's records) is checked in the same order as in one pass. The child is
        told the log ended only when `events` did: a reader that stops early leaves it waiting, to
        be killed when the block ends. Closing this closes `events` (a reader of the store holds a
        transaction). When no child started, the pages are added to a digest instead (`digest`).

        With `weigh`, a page also ends once its events' fields hold `_PAGE_BYTES`: for events whose
        size nothing bounds but the line they came on (an export's, up to `MAX_LINE` each), so
        that a page never holds a thousand of the largest. (The store's reader holds its own pages
        of rows, and weighs nothing.)"""
        page: list[StoredEvent] = []
        held = 0
        self._taken = ReadDigest() if self._process is None else None
        try:
            for e in events:
                yield e
                page.append(e)
                if weigh:
                    held += len(e.payload) + len(e.entity_id) + len(e.run_id) + len(e.machine) + len(e.event_type)
                if len(page) == _PAGE or held >= _PAGE_BYTES:
                    self._send(page)
                    page, held = [], 0
            if page:
                self._send(page)
            self._write(b"")  # the end of the log
            self._fed = True
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    def _send(self, page: list[StoredEvent]) -> None:
        if self._taken is not None:
            self._taken.add_page(page)
        else:
            self._write(encode_page(page))

    def _write(self, data: bytes) -> None:
        if self._process is not None and self._pages is not None and not self._broken:
            try:
                self._pages.send_bytes(data)
            except OSError:  # it ended: `result` says so
                self._broken = True

    def digest(self) -> bytes | None:
        """The digest (`ReadDigest`) of the events `tap` handed on when no child started to take
        them; None when one did. A second read is held to the first by it (`verify_store`): the
        child's answer says what it saw, and when there is none, what this process saw of the
        first read cannot be held to anything. (A digest of every read cost a 1,000,000-event
        check about 0.45 CPU-s of the process that folds, for the rare read that is compared.)"""
        return self._taken.digest() if self._taken is not None else None

    def result(self) -> ChainCheck | None:
        """The chain half's result, once the child sends it; None when it could not start, failed,
        or ended without an answer, or `tap` did not hand on the whole log (it would wait for
        the rest)."""
        if self._process is None or self._answers is None or not self._fed:
            return None
        try:
            kind, value = pickle.loads(self._answers.recv_bytes())
        except (EOFError, OSError, pickle.UnpicklingError):
            return None
        if kind != "ok":
            return None
        assert isinstance(value, ChainCheck)
        return value


def main() -> None:
    """The child's life: its arguments, the chain half of the pages it is sent, one answer."""
    answer = Connection(int(sys.argv[1]), readable=False)
    pages = Connection(int(sys.argv[2]), writable=False)
    run_id, roots_at, parent = pickle.load(sys.stdin.buffer)
    die_with(parent)
    try:
        with gc_paused():
            chain = check_chain(run_id, _received(pages), roots_at=roots_at)
        reply: tuple[str, object] = ("ok", chain)
    except Exception as e:  # the parent does this half itself
        reply = ("error", str(e))
    # The parent writes every page before it reads the answer. After a bad event, the pages'
    # pipe is closed first (its writes then fail, and it stops), or an answer longer than a pipe
    # holds (a root per checkpoint) would wait on the parent while the parent waits on the pages.
    pages.close()
    answer.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


def _received(pages: Connection) -> Iterator[StoredEvent]:
    """The events of the pages the parent sends, up to its end mark (EOFError when the pipe
    closes before it)."""
    while page := pages.recv_bytes():
        yield from decode_page(page)
