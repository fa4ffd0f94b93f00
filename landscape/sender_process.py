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
copies, projects and commits (`landscape.commits`), and answers with the checkpoint. The
writer hands over one batch at a time and waits for its answer before the next, as it did with a
thread, so commits stay in order and memory stays bounded.

The engine's process holds the run's writer lock and the child its sender lock
(`landscape.commits`): the run has a live writer while either lives, so neither a child that
died alone nor one still finishing a commit after its parent died lets another writer in. The
child ends when the writer closes it, when the writer's end of the pipe closes (its process
ended), and on Linux at once when the writer's process dies (`PR_SET_PDEATHSIG`). It ignores
SIGINT and SIGTERM (stopping is the engine's to decide), closes every descriptor it inherited
but its pipes, and collects no garbage (see `_seal`). An exchange cut off half way (a stop at
once) ends the child with SIGKILL: what it had not committed is lost, as in a crash. A test's
fault (`landscape.faults`) reached in the child ends the parent the same way.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

import psycopg

from landscape import commits, faults
from landscape.child import die_with, widen_pipe
from landscape.errors import LandscapeError, StoreError
from landscape.merkle import MerkleAccumulator
from landscape.notary import Notary

_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGALRM}  # the engine's (engine/stopping.py)


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
        try:
            size = self._answer(f"opening the writer of run {run_id}")
        except BaseException:
            self._end(kill=True)
            raise
        self.size: int = size  # the events the log holds: the next seq

    def submit(self, batch: commits.Batch) -> None:
        """Hand a batch over; `wait` says how it went."""
        try:
            self._to.send_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        except BrokenPipeError:
            self._answer(f"committing events of run {self.run_id}")  # the child is gone: say how
        except BaseException:  # interrupted half way (a stop at once): the child has half a batch
            self._broken = True
            raise

    def wait(self) -> commits.SignedCheckpoint | None:
        """Until the batch handed over is committed: its signed checkpoint (`commits.send`), or its
        error if it failed."""
        checkpoint: commits.SignedCheckpoint | None = self._answer(f"committing events of run {self.run_id}")
        return checkpoint

    def close(self) -> None:
        """Ask the child to release the run and end, and wait until it has; after an exchange cut
        off half way, end it at once (what it had not committed is lost, as in a crash)."""
        try:
            if self._pid is not None and not self._broken:
                with contextlib.suppress(OSError, LandscapeError):  # it ended already; reported below
                    self._to.send_bytes(b"")
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
        chain = commits.Chain(run_id, tree, head, notary)
        _say(outbox, "ok", tree.size)
        while True:
            try:
                message = inbox.recv_bytes()
            except (EOFError, OSError):  # the writer's process ended (perhaps half way through a
                break  # batch): what it had not handed over is lost, as in a crash
            if not message:
                commits.release(conn, run_id, keys=(commits.SENDER_LOCK,))
                _say(outbox, "ok", None)
                break
            try:
                chain, checkpoint = commits.send(conn, chain, pickle.loads(message))
            except Exception as e:
                _say(outbox, "error", e)
                continue
            _say(outbox, "ok", checkpoint)
            faults.reached("committed")
        code = 0
    finally:
        os._exit(code)


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
