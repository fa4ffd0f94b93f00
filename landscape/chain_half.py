"""The chain half of a long log's verification, in a second process (`ChainHalf`).

This process reads the log and hands each page, as it read it, to a child that runs the chain
checks (`landscape.verify.check_chain`) while this process decodes and folds the same events: two
cores check one read. The child never speaks to the database: it imports no driver, and what it
checks is exactly what this process folded (the bytes of each page, `encode_page`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Collection, Iterable, Iterator
from multiprocessing.connection import Connection

from landscape.child import die_with, widen_pipe
from landscape.records import StoredEvent
from landscape.verify import ChainCheck, ReadDigest, check_chain, decode_page, encode_page, gc_paused

# Pages encoded but not yet taken by the child: this process folds ahead by up to this many
# (each a few MB), so that neither waits on the other page by page.
_AHEAD = 8


class ChainHalf:
    """The child that runs the chain half on the pages `feed` hands it, and this process's side.

    A new interpreter, not a fork: the process may have threads, whose locks a fork would copy as
    they are; nor multiprocessing's spawn, which imports the caller's main script again in the
    child (a script without a `__main__` guard would run twice). It starts isolated (`-I`: no
    working directory, no PYTHON* variables, no user site on its path) and then takes this
    process's module path as it is, so it runs the same code this process runs and nothing a
    directory or a variable slipped in ahead of it. Its path and arguments go down its stdin, the
    pages down a pipe of their own (sent by a thread: this process goes on folding meanwhile), its
    one answer comes up a third. It is in a session of its own (Ctrl-C reaches this process, which
    decides), ends with this process (`die_with`), and is killed when the block ends before it
    answered. When it cannot start, or fails, `result` is None."""

    _BOOT = (
        "import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); import landscape.chain_half as m; m.main()"
    )

    def __init__(self, run_id: str, roots_at: Collection[int]) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_AHEAD)
        self._sender: threading.Thread | None = None
        self._fed = False  # the whole log was handed on (`feed`)
        message = pickle.dumps(sys.path, protocol=pickle.HIGHEST_PROTOCOL) + pickle.dumps(
            (run_id, sorted(roots_at), os.getpid()), protocol=pickle.HIGHEST_PROTOCOL
        )
        answers, answer_end = os.pipe()
        page_end, pages = os.pipe()
        widen_pipe(pages)
        self._answers = Connection(answers, writable=False)
        self._pages = Connection(pages, readable=False)
        try:
            if sys.executable:  # (none in an embedding: `result` says None)
                self._process = subprocess.Popen(
                    [sys.executable, "-I", "-c", self._BOOT, str(answer_end), str(page_end)],
                    stdin=subprocess.PIPE,
                    pass_fds=(answer_end, page_end),
                    start_new_session=True,
                )
        except OSError:  # it cannot be started: `result` says None
            pass
        finally:
            os.close(answer_end)
            os.close(page_end)
        try:
            if self._process is not None and self._process.stdin is not None:
                with contextlib.suppress(BrokenPipeError):  # it ended already: `result` says None
                    self._process.stdin.write(message)
                with contextlib.suppress(BrokenPipeError):
                    self._process.stdin.close()
            self._sender = threading.Thread(target=self._send, name="elspeth-chain-pages", daemon=True)
            self._sender.start()
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
        if self._sender is not None:
            # The child is gone, so the sender's writes fail at once: it drains what is queued
            # and ends at the mark (room for which is made when the queue is full).
            while True:
                try:
                    self._queue.put_nowait(None)
                    break
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self._queue.get_nowait()
            self._sender.join()
        self._pages.close()
        self._answers.close()

    def feed(self, pages: Iterable[list[StoredEvent]], read: ReadDigest) -> Iterator[StoredEvent]:
        """The events of `pages`, each page added to `read` (as the very bytes the child is sent)
        and handed to the child before its events are handed on. The child is told the log ended
        only when `pages` did: a reader that stops early leaves it waiting, to be killed when the
        block ends. Closing this closes `pages` (a reader of the store holds a transaction)."""
        try:
            for page in pages:
                data = encode_page(page)
                read.add_encoded(data, len(page))
                self._queue.put(data)
                yield from page
            self._queue.put(b"")  # the end of the log
            self._fed = True
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    def _send(self) -> None:
        """The sender thread: each page down the pipe until the end mark (b"") or None; after a
        failed write (the child ended), the rest is dropped."""
        broken = self._process is None
        while (data := self._queue.get()) is not None:
            if not broken:
                try:
                    self._pages.send_bytes(data)
                except OSError:
                    broken = True
            if not data:
                break

    def result(self) -> ChainCheck | None:
        """The chain half's result, once the child sends it; None when it could not start, failed,
        or ended without an answer, or `feed` did not hand on the whole log (it would wait for
        the rest)."""
        if self._process is None or not self._fed:
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
    answer.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


def _received(pages: Connection) -> Iterator[StoredEvent]:
    """The events of the pages the parent sends, up to its end mark (EOFError when the pipe
    closes before it)."""
    while page := pages.recv_bytes():
        yield from decode_page(page)
