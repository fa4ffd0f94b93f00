"""A run writer's commits, sent by a child process.

Why a process: a sending thread needs the GIL for a moment after every network wait (each few
hundred kilobytes of a COPY the server reads, each statement), and the engine's thread holds it
nearly all the time. With short GIL slices the two threads hand it back and forth thousands of
times per commit; with long ones the server starves. Measured on the linear example (100,000
rows, in-process, back to back): sending inline took 6.8 s of the engine's CPU and 6.8 s of
sending, one after the other; on a thread they overlapped, but the handovers cost both threads
(the sender's CPU time went from 0.4 s to 1.8 s, the engine waited 2.3 s for it). A child has
its own interpreter: the engine's process only builds batches and writes them to a pipe.

The child is forked when the writer opens. It connects on its own, takes the run's sender lock,
and answers with where the log ends; then, for each batch it is handed, it chains its events
(their hashes, the Merkle tree, the signed checkpoint: work taken off the engine's core),
copies, projects and commits (`landscape.commits`), and answers with the checkpoint. The writer
hands each batch over before it reads the answer to the one before, and reads that answer
before it goes on: at most two batches are in the child, commits stay in order and memory stays
bounded. The child chains the second on a thread while the server copies in and projects the
first (`_seal_ahead`): on fork/coalesce, 10,000 rows in one process, the engine waited 1.1 s for
commits instead of 1.8 s, and the run took 5.2 s instead of 5.85. Should a commit fail, the child
commits nothing after it.

The engine's process holds the run's writer lock and the child its sender lock
(`landscape.commits`): the run has a live writer while either lives, so neither a child that
died alone nor one still finishing a commit after its parent died lets another writer in. The
child ends when the writer closes it, when the writer's end of the pipe closes (its process
ended), and on Linux at once when the writer's process dies (`PR_SET_PDEATHSIG`). It ignores
SIGINT, SIGTERM and SIGHUP (stopping is the engine's to decide), closes every descriptor it inherited
but its pipes, and collects no garbage (see `_seal`). An exchange cut off half way (a stop at
once) ends the child with SIGKILL: what it had not committed is lost, as in a crash. A test's
fault (`landscape.faults`) reached in the child ends the parent the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

import msgspec
import psycopg

from landscape import commits, faults
from landscape.child import die_with, widen_pipe
from landscape.errors import LandscapeError, StoreError
from landscape.merkle import MerkleAccumulator
from landscape.notary import Notary

_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM}  # the engine's (engine/stopping.py)
# A batch crosses the pipe as MessagePack: three byte strings per event, which pickle memoizes one
# by one (a 16,000-event batch: 8-10 ms to pickle, 1-4 ms to encode; the engine's core pays it).
_BATCH = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(commits.Batch)


class SenderProcess:
    """The child that commits one run's batches; the parent's side of it."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        run_id: str,
        verified: tuple[MerkleAccumulator, bytes] | None,
        notary: Notary | None,
    ) -> None:
        self.run_id = run_id
        to_child, from_parent = _pipe()
        to_parent, from_child = _pipe()
        parent = os.getpid()
        # Signals wait until the fork is done: the child must never run the engine's handlers.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:  # the child: leaves only through os._exit, whatever happens
                try:
                    _seal(mask, keep=(from_parent.fileno(), to_parent.fileno()))
                    _serve(connect, run_id, verified, notary, from_parent, to_parent, parent)
                finally:
                    os._exit(1)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        from_parent.close()
        to_parent.close()
        self._pid: int | None = pid
        self._to, self._from = to_child, from_child
        self._broken = False  # an exchange was cut off half way: the child is ended, not asked
        self._unanswered = 0  # batches handed over whose answers are still to be read
        try:
            size = self._answer(f"opening the writer of run {run_id}")
        except BaseException:
            self._end(kill=True)
            raise
        self.size: int = size  # the events the log holds: the next seq

    def submit(self, batch: commits.Batch) -> None:
        """Hand a batch over; `wait` says how it went."""
        try:
            self._to.send_bytes(_BATCH[0].encode(batch))
        except BrokenPipeError:  # the child is gone: its end is this batch's answer, read after those
            if self._unanswered == 0:  # before it (each may be a commit to witness); none: said now
                self._answer(f"committing events of run {self.run_id}")
        except BaseException:  # interrupted half way (a stop at once): the child has half a batch
            self._broken = True
            raise
        self._unanswered += 1

    def cut_off(self) -> None:
        """This side failed with a batch still in the child: `close` ends it at once, as in a
        crash, rather than let it commit on (what it committed already stays)."""
        self._broken = True

    def wait(self) -> commits.SignedCheckpoint | None:
        """Until the first batch handed over and not yet answered is committed: its signed
        checkpoint (`commits.send`), or its error if it failed."""
        self._unanswered -= 1
        checkpoint: commits.SignedCheckpoint | None = self._answer(f"committing events of run {self.run_id}")
        return checkpoint

    def close(self) -> None:
        """Ask the child to release the run and end, and wait until it has; after an exchange cut
        off half way, end it at once (what it had not committed is lost, as in a crash)."""
        try:
            if self._pid is not None and not self._broken:
                with contextlib.suppress(OSError, LandscapeError):  # it ended already; reported below
                    self._to.send_bytes(b"")
                    while self._unanswered > 0:  # handed over after a commit that failed: refused
                        with contextlib.suppress(Exception):
                            self.wait()
                    self._answer(f"closing the writer of run {self.run_id}")
        finally:
            self._end(kill=self._broken)

    def _end(self, *, kill: bool) -> None:
        self._to.close()
        self._from.close()
        pid, self._pid = self._pid, None
        if pid is not None:
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _reap(pid)

    def _answer(self, what: str) -> Any:
        try:
            kind, value = pickle.loads(self._from.recv_bytes())
        except EOFError:  # the child closed its end: it is ending (the only way it closes it)
            pid, self._pid = self._pid, None
            if pid is None:
                raise StoreError(f"{what}: the writer's process had already ended") from None
            code = _reap(pid)
            raise StoreError(f"{what}: the writer's process ended unexpectedly (exit status {code})") from None
        except BaseException:  # interrupted (a stop at once), or a pipe that failed: the answer
            self._broken = True  # may still come, or never; the child is ended, not asked again
            raise
        if kind == "error":
            raise value
        return value


def _reap(pid: int) -> int:
    """Wait for the child to end; its exit code (a test's fault in it ends this process too)."""
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    faults.died_in_child(code)
    return code


def _pipe() -> tuple[Connection, Connection]:
    reader, writer = Pipe(duplex=False)
    widen_pipe(writer.fileno())
    return writer, reader


def _serve(
    connect: Callable[[], psycopg.Connection[Any]],
    run_id: str,
    verified: tuple[MerkleAccumulator, bytes] | None,
    notary: Notary | None,
    inbox: Connection,
    outbox: Connection,
    parent: int,
) -> None:
    """The child's life. It leaves only through `os._exit`: the parent's objects it inherited
    (its connections, its open files) must see no finalizer run here."""
    code = 1
    try:
        die_with(parent)
        try:
            conn = connect()
            tree, head = commits.open_log(conn, run_id, verified, keys=(commits.SENDER_LOCK,))
        except BaseException as e:
            _say(outbox, "error", e)
            code = 0
            return
        _say(outbox, "ok", tree.size)
        # The sealing thread runs Python while this one mostly waits on the server; a short
        # switch interval lets this one take its turn as soon as each wait ends (fork/coalesce,
        # 10,000 rows, three alternations: 5.38 s against 5.58 s with Python's default).
        sys.setswitchinterval(_SWITCH_INTERVAL)
        ready: queue.Queue[_Ready] = queue.Queue(maxsize=1)  # one batch sealed ahead
        threading.Thread(
            target=_seal_ahead, args=(inbox, commits.Chain(run_id, tree, head, notary), ready), daemon=True
        ).start()
        chain = commits.Chain(run_id, tree, head, notary)
        failed: BaseException | None = None
        while True:
            item = ready.get()
            if isinstance(item, str):
                # Closed by the writer; or its process ended (perhaps half way through a batch),
                # and what it had not handed over is lost, as in a crash.
                if item == _CLOSE:
                    commits.release(conn, run_id, keys=(commits.SENDER_LOCK,))
                    _say(outbox, "ok", None)
                break
            batch, sealed = item
            if failed is not None:  # handed over before the writer knew: its seqs follow the failed ones
                _say(outbox, "error", StoreError(f"run {run_id}: not committed, after a failed commit ({failed})"))
                continue
            try:
                if isinstance(sealed, Exception):
                    raise sealed
                chain, checkpoint = commits.send(conn, chain, batch, sealed)
            except Exception as e:
                failed = e
                _say(outbox, "error", e)
                continue
            del item, batch, sealed  # (not held while the next is awaited)
            _say(outbox, "ok", checkpoint)
            faults.reached("committed")
        code = 0
    finally:
        os._exit(code)


# What the sealing thread hands on: a batch with its events chained, or the error that chaining
# it met; or that the writer closed the child, or that its process is gone.
_Ready = tuple[Any, commits.Sealed | Exception] | str
_CLOSE, _GONE = "close", "gone"
_SWITCH_INTERVAL = 0.0005  # seconds (Python's default is 0.005)


def _seal_ahead(inbox: Connection, chain: commits.Chain, ready: queue.Queue[_Ready]) -> None:
    """Take each batch the writer hands over and chain it (`Chain.sealed`) on the one before, as
    that one will be once committed, while the child's main thread commits that one: the server's
    work on a commit and this hashing overlap. The writer hands over at most one batch ahead of
    the answer it waits for: besides the batch being committed, the child holds one (sealed, or
    being sealed), and for a moment after an answer, the writer's next. Should a commit fail,
    the main thread commits none of those after it."""
    while True:
        try:
            message = inbox.recv_bytes()
        except (EOFError, OSError):
            ready.put(_GONE)
            return
        except Exception as e:  # (none is expected: should one come, it is said, and the child ends)
            ready.put((None, e))
            ready.put(_GONE)
            return
        if not message:
            ready.put(_CLOSE)
            return
        batch: Any = None
        try:
            batch = _BATCH[1].decode(message)
            del message
            sealed = chain.sealed(batch)
        except Exception as e:
            ready.put((batch, e))
            continue
        chain = sealed.after
        # The events are in the copy data now: not kept twice while it waits.
        ready.put((dataclasses.replace(batch, kinds=[], entities=[], times=[], bodies=[]), sealed))
        del batch, sealed


def _seal(mask: set[int | signal.Signals], keep: tuple[int, ...]) -> None:
    """Make the forked child its own: no garbage collection (a finalizer of an object that was
    already garbage in the parent could close the parent's connection, or write to a descriptor
    number this child has reused), interrupts ignored, and every descriptor closed but stdio and
    its two pipe ends (the parent's sockets, files, locks and other writers' pipes)."""
    gc.disable()
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _say(outbox: Connection, kind: str, value: object) -> None:
    try:
        data = pickle.dumps((kind, value), protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)  # an exception whose class cannot be rebuilt from its arguments
    except Exception:
        message = str(value) if isinstance(value, LandscapeError) else f"{type(value).__name__}: {value}"
        data = pickle.dumps((kind, StoreError(message)), protocol=pickle.HIGHEST_PROTOCOL)
    outbox.send_bytes(data)
