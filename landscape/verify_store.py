"""Verifying a run as the store holds it: `verify_log` (the events) and `verify_run` (the events,
the signed checkpoints, the row payloads).

A long log is verified by two processes at once. Each event costs a few microseconds of Python
in one interpreter (decoding, four hashes, the Merkle tree, the fold), so one process keeps one
core busy and leaves the other to the server. Both processes read the same events, in one
snapshot of the database (`PostgresRecorder.shared_snapshot`): however the tables change
meanwhile, they see exactly the same rows. The child runs the chain half of the checks
(`landscape.verify.check_chain`) and then, for `verify_run`, hashes the run's payloads
(`good_payloads`); this process decodes and folds (`check_events`). When both find nothing,
their results together are exactly what one pass (`verify_events`) returns; when either finds
something, one pass over the same snapshot names the first bad event, as it always has.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from collections.abc import Collection, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from landscape.checkpoint import run_origin
from landscape.child import die_with
from landscape.errors import StoreError
from landscape.notary import Witnessed
from landscape.note import Verifier
from landscape.postgres import PostgresRecorder
from landscape.verify import (
    ChainCheck,
    Observer,
    Verification,
    check_chain,
    check_events,
    gc_paused,
    good_payloads,
    joined,
    verify_checkpoints,
    verify_events,
    verify_payloads,
)

# Logs at least this long are verified by two processes. Starting the second costs about 0.3 s
# (a new interpreter importing the verifier); it saves about 3 µs per event.
SPLIT_AT = 200_000
_HASH = 32


def verify_log(
    recorder: PostgresRecorder,
    run_id: str,
    *,
    upto_seq: int | None = None,
    observe: Observer | None = None,
    roots_at: Collection[int] = (),
    references: bool = True,
    payloads: bool = False,
    split_at: int = SPLIT_AT,
) -> tuple[Verification, bytes]:
    """`verify_events` over a run's stored events (up to `upto_seq`); never raises for a bad log.
    Also returns, when `payloads` and the log was long enough to be split, the hashes of the run's
    payloads found intact (`good_payloads`; else b""). `observe` sees each event of a good log
    once; after a bad one, what it saw is not to be relied on."""
    with recorder.shared_snapshot(run_id) as (snapshot, last):
        upto = last if upto_seq is None else min(upto_seq, last)

        def events() -> Any:
            return recorder.read_events(run_id, upto_seq=upto, snapshot=snapshot)

        if upto + 1 >= split_at:
            with _ChainProcess(recorder, run_id, snapshot, upto, roots_at, payloads) as chain:
                checked = check_events(run_id, events(), observe=observe, references=references)
                halves = joined(checked, chain.result()) if checked.bad is None else None
            if halves is not None:
                return halves, chain.good
        # A short log, or something is wrong: one pass, which names the first bad event.
        return verify_events(run_id, events(), observe=observe, roots_at=roots_at, references=references), b""


def verify_run(
    recorder: PostgresRecorder,
    run_id: str,
    *,
    upto_seq: int | None = None,
    observe: Observer | None = None,
    checkpoints: Sequence[Witnessed] = (),
    verifier: Verifier | None = None,
    split_at: int = SPLIT_AT,
) -> Verification:
    """Verify a run's log (`verify_log`), check the signed `checkpoints` against it (see
    `verify_checkpoints`), then the row payloads it references. Raises ChainBroken naming the
    first bad seq (CorruptLog when the run has no events)."""
    sizes = [cp.size for cp in checkpoints]
    with gc_paused():  # the payloads read are as many as the rows: see `gc_paused`
        verified, intact = verify_log(
            recorder, run_id, upto_seq=upto_seq, observe=observe, roots_at=sizes, payloads=True, split_at=split_at
        )
        verified.raise_if_bad()
        if checkpoints:
            verified.bad = verify_checkpoints(verified, checkpoints, verifier, run_origin(recorder.store_id(), run_id))
            verified.raise_if_bad()
        referenced = verified.referenced
        if intact:  # only the others are read here (none, unless erased, altered or kept unsorted)
            good = {intact[i : i + _HASH] for i in range(0, len(intact), _HASH)}
            referenced = {h: seq for h, seq in referenced.items() if bytes.fromhex(h) not in good}
        present = recorder.payloads(run_id, referenced)
        absent = [h for h in referenced if h not in present]
        verified.erased = recorder.erasures(absent) if absent else {}
        explained = {h: e.describe() for h, e in verified.erased.items()}
        bad = verify_payloads(referenced, present, explained=explained)
    if bad is not None:
        verified.bad = bad
        verified.raise_if_bad()
    return verified


class _ChainProcess:
    """The child that runs the chain half (and hashes the payloads), and this process's side of it.

    A new interpreter running this module (`_main`), not a fork: the process may have threads,
    whose locks a fork would copy as they are; nor multiprocessing's spawn, which imports the
    caller's main script again in the child (a script without a `__main__` guard would run
    twice). Its arguments go down its stdin, its one answer comes up a pipe of its own. It is in a
    session of its own (Ctrl-C reaches this process, which decides), ends with this process
    (`die_with`), and is killed when the block ends before it answered."""

    def __init__(
        self,
        recorder: PostgresRecorder,
        run_id: str,
        snapshot: str,
        upto: int,
        roots_at: Collection[int],
        payloads: bool,
    ) -> None:
        self.run_id = run_id
        self.good = b""
        reader, writer = os.pipe()
        # The child imports this very `landscape`, wherever it was imported from here.
        path = [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "landscape.verify_store", str(writer)],
                stdin=subprocess.PIPE,
                pass_fds=(writer,),
                env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
                start_new_session=True,
            )
        finally:
            os.close(writer)
        self._answers = Connection(reader)
        args = (recorder, run_id, snapshot, upto, sorted(roots_at), payloads, os.getpid())
        stdin = self._process.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it ended already: `result` says how
            stdin.write(pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL))
            stdin.close()

    def __enter__(self) -> _ChainProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._answers.close()

    def result(self) -> ChainCheck:
        """The chain half's result (and `good`, the payloads found intact); waits for it."""
        try:
            kind, value = pickle.loads(self._answers.recv_bytes())
        except EOFError:
            code = self._process.wait()
            raise StoreError(f"verifying run {self.run_id}: the second process ended (exit status {code})") from None
        if kind == "error":
            raise StoreError(f"verifying run {self.run_id} (second process): {value}")
        chain, self.good = value
        assert isinstance(chain, ChainCheck)
        return chain


def _main() -> None:
    """The child's life: its arguments, the chain half, the payloads, one answer."""
    answer = Connection(int(sys.argv[1]))
    recorder, run_id, snapshot, upto, roots_at, payloads, parent = pickle.load(sys.stdin.buffer)
    die_with(parent)
    try:
        chain = check_chain(run_id, recorder.read_events(run_id, upto_seq=upto, snapshot=snapshot), roots_at=roots_at)
        good = good_payloads(recorder.scan_payloads(run_id, snapshot)) if payloads and not chain.bad else b""
        reply: tuple[str, object] = ("ok", (chain, good))
    except Exception as e:
        reply = ("error", str(e) or type(e).__name__)
    answer.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _main()
