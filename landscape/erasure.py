"""Erasing row data without breaking a proof: retention and a data subject's request.

What goes is a payload's data and its salt (the row `payloads(hash, salt, data)`); what stays is
the commitment the events hold, so the chain, the Merkle tree and every proof still verify, while
a guessed value can no longer be confirmed (see `landscape.canonical`). Each erased payload gets
an append-only `erasures` record — when, which run and row, why, by which database role — written
in the same transaction as the delete; the database refuses to delete a payload without one.

A row's payloads are found from the events, not the projections (`landscape.export.Lineage`):
every token descending from the row's source token (fork branches, expansions, merges and batch
outputs that contain it, through `TokenCreated.parents`) and every payload their creation and
steps reference.

A run that has not completed can still be resumed, and a resume needs the data of its unfinished
tokens: retention leaves such runs' data alone (and says so), and a request on one is refused
unless forced, which its records then say. Whether a run completed is read from its log, not the
`runs` table: the writer role may UPDATE that projection (`run_statuses`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Sequence
from datetime import datetime

import msgspec

from landscape.checkpoint import run_origin
from landscape.commits import hold_for_transaction, holding, lock_holder
from landscape.db import Connection, Database, driver_errors
from landscape.errors import ChainBroken, CorruptLog, LandscapeError, PermissionDenied, UnknownRun
from landscape.export import Lineage
from landscape.notary import Witnessed
from landscape.note import NoteError, Signer, Verifier, parse_note
from landscape.postgres import PostgresRecorder, run_ids_in
from landscape.records import Erasure, StoredEvent
from landscape.seal import origin_of, sign
from landscape.verify import checkpoint_of, row_hashes
from landscape.verify_store import verify_run
from landscape.visible import one_line
from statecharts.events import EventBase
from statecharts.machines import RUN_FINAL, RUN_STATUS_AFTER


class ErasureRefused(LandscapeError):
    """An erasure that must not happen as asked (unknown row, a run still being written, ...)."""


# A run can be resumed until it completes or is abandoned (statecharts/machines.py: the run's
# terminal states; a failed or interrupted run, or one whose writer died, is resumed). A resume
# carries each unfinished token on from its stored data: erase that, and the run can never end.
_FINAL = frozenset(str(s) for s in RUN_FINAL)
# The run machine's events that set its status, by the name the log holds: a run's status is
# that of its last one (events of entity 'run', found by the index of migration 0011).
_STATUS_OF = {t.__name__: str(state) for t, state in RUN_STATUS_AFTER.items()}
_UNKNOWN = "unknown"  # a run whose log holds no status-setting event


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What an erasure would remove. A request names each payload: hash -> (run, row) it belongs
    to. Retention names the runs and the cutoff (`counts`: run -> payloads older than `cutoff`),
    and the server finds the payloads as it erases them, run by run: a backlog of millions of
    payloads held in this process took about 600 bytes each (a 10-million-payload backlog, 6 GB)."""

    kind: str
    payloads: dict[str, tuple[str | None, int | None]] = {}  # requests only
    tokens: list[str] = []  # the tokens whose data goes (requests only)
    already_erased: int = 0
    rows: list[int] = []  # the source rows asked for (requests only), as row_index
    resumable: dict[str, str] = {}  # run -> status: runs that can still be resumed (see _FINAL)
    forced: bool = False  # their data goes all the same (`--force`): said in each record's reason
    unread_from: int | None = None  # forced: the first seq past the part of the log read (requests only)
    cutoff: datetime | None = None  # retention only
    counts: dict[str, int] = {}  # retention only: run ('' for payloads kept before runs) -> payloads
    put_back: int = 0  # payloads back in the store that records of their erasure cover (`_PUT_BACK`)
    run_id: str = ""  # requests only: the run
    put_back_hashes: list[str] = []  # requests only: those of `put_back`

    def runs(self) -> dict[str, int]:
        """How many payloads go of each run ('' for payloads kept before runs were recorded on them)."""
        if self.kind == "retention":
            return dict(self.counts)
        counts: dict[str, int] = {}
        for run, _row in self.payloads.values():
            counts[run or ""] = counts.get(run or "", 0) + 1
        return counts

    @property
    def size(self) -> int:
        """How many payloads go (those put back after their erasure too)."""
        return (sum(self.counts.values()) if self.kind == "retention" else len(self.payloads)) + self.put_back


# Payloads in the store that a record of their erasure covers: put back after it by someone who
# could write to the store (the writer role inserts payloads, with whatever `recorded_at` it
# likes, and cannot delete them). No reader shows them (they count as erased), but SQL reads their
# bytes: each purge deletes them again, under the records that allow it (the trigger of 0010). A
# payload kept before payloads had a run ('') goes only under a record of no run: a run's record
# does not say the other runs it may serve are done with it.
_PUT_BACK = (
    "FROM payloads p WHERE EXISTS (SELECT 1 FROM erasures e WHERE e.hash = p.hash "
    "AND (e.run_id = p.run_id OR (p.run_id = '' AND e.run_id IS NULL)))"
)
_PUT_BACK_OF = " AND p.run_id = %s AND p.hash = ANY(%s)"  # a request's: of its run, of its rows


def plan_rows(
    db: Database,
    run_id: str,
    rows: Sequence[int],
    *,
    force: bool = False,
    verifier: Verifier | None = None,
    checkpoints: Sequence[Witnessed] | None = None,
) -> Plan:
    """Every payload of the given source rows of a run, across all tokens that contain them. A
    run that can still be resumed is refused unless `force`.

    Which payloads are the rows' is read from the log as it verifies (`verify_run`: the chain,
    and the signed `checkpoints`, the store's when None, with `verifier`), never from the log
    as the store hands it over: someone who can write to the store but not sign could otherwise
    point a row's tokens at another row's data, have the operator's purge erase that under a
    signed record, and put the log back. A run with no checkpoint that verifies is refused, forced
    too. Forced, only the part of the log that the newest checkpoint verifying with `verifier`
    signs is read (`Plan.unread_from`)."""
    recorder = PostgresRecorder(db)
    if not recorder.run_exists(run_id):
        raise UnknownRun(f"no run {one_line(run_id)} in {db.describe()} (see `elspeth runs`)")
    holder = recorder.lock_holder(run_id)
    if holder is not None:
        raise ErasureRefused(
            f"run {run_id} is {holding(holder)}; nothing was erased: erase its rows once that has ended"
        )
    with driver_errors(f"reading the status of run {run_id}"), db.connect() as conn:
        status = run_statuses(conn, [run_id], verifier, recorder.store_id())[run_id]
    if unproved(status) and not force:
        raise ErasureRefused(f"run {run_id} is {status}; nothing was erased (--force erases, said in the record)")
    if status not in _FINAL and not force:
        raise ErasureRefused(
            f"run {run_id} is {status} and can still be resumed: a resume carries its unfinished rows on from "
            "their stored data, and would stop for good at any it finds erased. Resume it to the end first "
            f"(`elspeth resume {run_id}`), or end it for good (`elspeth abandon {run_id} --reason TEXT`), or erase now "
            "with --force (said in the erasure record; the run can then not be resumed past these rows)"
        )
    signed = recorder.checkpoints(run_id) if checkpoints is None else list(checkpoints)
    origin = run_origin(recorder.store_id(), run_id)
    provable = [cp for cp in signed if checkpoint_of(cp.note, cp.size, verifier, origin) is not None]
    if not provable:
        # A log no checkpoint of the key signs is one anyone who can write to the store could have
        # rewritten: forced too.
        raise ErasureRefused(
            f"run {run_id} has no checkpoint that verifies with {verifier.label if verifier else 'no key'} "
            f"({_signers(signed)}), so nothing proves which payloads are its rows'; nothing was erased. Its witness "
            "file holds its checkpoints if the store's are gone; a run signed with another key is purged with "
            "ELSPETH_SIGNING_KEY naming that key's .key file (the erasure records are signed with it)"
        )
    wanted = set(rows)
    found: dict[str, tuple[str | None, int | None]] = {}
    tokens: dict[str, int] = {}
    of_rows = Lineage(wanted)

    def note(stored: StoredEvent, event: EventBase) -> None:
        row = of_rows.row_of(stored, event)
        if row is not None:
            tokens[stored.entity_id] = row
            for h in row_hashes(event):
                found.setdefault(h, (run_id, row))

    upto, unread = None, None
    if force:
        # Forced, the run's end may be unproved (an ending appended by someone who cannot sign,
        # a checkpoint signed with another key): the rows are found in the part of the log the
        # newest checkpoint that verifies signs, and the plan says where that part ends.
        signed = provable
        upto = max(cp.size for cp in signed) - 1
        if upto < recorder.last_seq(run_id):
            unread = upto + 1
    try:
        verify_run(recorder, run_id, upto_seq=upto, observe=note, checkpoints=signed, verifier=verifier,
                   payloads=False, as_of_now=not force)  # fmt: skip
    except (ChainBroken, CorruptLog) as e:
        raise ErasureRefused(
            f"the log of run {run_id} does not verify ({e}): which payloads are its rows' cannot be told; nothing was "
            f"erased. See `elspeth replay {run_id} --check`"
        ) from None
    missing = sorted(wanted - set(tokens.values()))
    if missing:
        # Said in the CLI's numbering: rows counted from 1 (row_index + 1, as __row_number__).
        shown = ", ".join(str(m + 1) for m in missing)
        if status in _FINAL or (unproved(status) and status.split(" ", 1)[0] in _FINAL):
            raise ErasureRefused(f"run {run_id} has no row {shown}; nothing was erased")
        # A run that stopped early read its source only so far: the row may well exist, and a
        # resume would read it (and its data would then be there to erase).
        raise ErasureRefused(
            f"run {run_id} has not read row {shown} (yet: it is {status}, and stopped before reaching it, unless its "
            "source has fewer rows); nothing was erased"
        )
    present = recorder.payloads(run_id, found)
    with driver_errors("looking for payloads put back after their erasure"), db.connect() as conn:
        back = [
            bytes(r[0]).hex()
            for r in conn.execute(f"SELECT p.hash {_PUT_BACK}{_PUT_BACK_OF}", (run_id, _hashes(found)))
        ]
    return Plan(
        kind="request",
        run_id=run_id,
        put_back=len(back),
        put_back_hashes=sorted(back),
        payloads={h: where for h, where in found.items() if h in present},
        tokens=sorted(tokens),
        already_erased=len(found) - len(present),
        rows=sorted(wanted),
        resumable={run_id: status} if status not in _FINAL else {},
        forced=force and status not in _FINAL,
        unread_from=unread,
    )


def _signers(checkpoints: Sequence[Witnessed]) -> str:
    """Who signed these checkpoints, as their notes say (unchecked): for a refusal's message."""
    labels: set[str] = set()
    for cp in checkpoints:
        with contextlib.suppress(NoteError):
            labels.update(s.label for s in parse_note(cp.note).signatures)
    if not checkpoints:
        return "it has none, in the store or in its witness file"
    return f"{len(checkpoints)} signed by {', '.join(sorted(labels)) or 'nothing readable'}"


def plan_retention(db: Database, cutoff: datetime, *, force: bool = False, verifier: Verifier | None = None) -> Plan:
    """Every payload written before `cutoff` that is still there, with the run that wrote it
    (None for payloads written before payloads were kept by run). The payloads of runs that can
    still be resumed stay, unless `force`; so do those kept before payloads had a run while any
    run can be resumed (which run they serve is not recorded)."""
    with driver_errors("planning retention"), db.connect() as conn:
        old_runs = dict(
            conn.execute(
                "SELECT run_id, count(*) FROM payloads WHERE recorded_at < %s GROUP BY run_id", (cutoff,)
            ).fetchall()
        )
        # Payloads kept before they had a run ('') may serve any run: all of them are asked then.
        asked = run_ids_in(conn, "events") if "" in old_runs else [run for run in old_runs if run]
        # A run without run events (none was created) cannot be resumed either.
        statuses = run_statuses(conn, asked, verifier, PostgresRecorder(db).store_id())
        open_runs = {run: st for run, st in statuses.items() if st not in _FINAL and st != _UNKNOWN}
    resumable = {run: open_runs[run] for run in sorted(old_runs) if run in open_runs}
    if "" in old_runs and open_runs:
        resumable[""] = "kept before payloads had a run"
    keep = set() if force else set(resumable)
    with driver_errors("looking for payloads put back after their erasure"), db.connect() as conn:
        back = conn.execute(f"SELECT count(*) {_PUT_BACK}").fetchone()
    return Plan(
        kind="retention",
        put_back=back[0] if back else 0,
        resumable=resumable,
        forced=force and bool(resumable),
        cutoff=cutoff,
        counts={run: n for run, n in sorted(old_runs.items()) if run not in keep},
    )


def run_statuses(
    conn: Connection, runs: Sequence[str], verifier: Verifier | None = None, store_id: str = ""
) -> dict[str, str]:
    """Each run's status as its log says it (its last status-setting run event), in one statement
    for all of them. The `runs` table says the same unless someone changed it: the writer role may
    UPDATE that projection, to have an unfinished run's data erased as if it had completed, or a
    completed run's kept from retention. A run where they differ is refused, said.

    The writer may also append events, a RunCompleted or a RunInterrupted among them, but it
    cannot sign: ELSPETH signs a checkpoint of the whole log with each commit, so the log's last
    event must end a checkpoint whose note is this run's (signed by `verifier`, when the note is
    that key's: another key's signature cannot be checked here; `elspeth replay --check` does).
    Refused otherwise, for retention too: a store written to that way is to be looked into first.

    A run whose log says it ended for good (completed, abandoned) lets its data go, so that claim
    must be the signer's: its end's checkpoint must bear a valid signature of `verifier`. Anyone
    who can write to the store can add a checkpoint signed with a key of their own, or, to a run
    with no checkpoint at all, an ending. Such a run's data is kept as a resumable run's is, its
    status saying why (`unproved`)."""
    rows = conn.execute(
        "SELECT u.run_id, l.event_type, r.status, n.last, c.note, "
        "EXISTS (SELECT 1 FROM checkpoints k WHERE k.run_id = u.run_id) FROM unnest(%s::text[]) AS u(run_id) "
        "LEFT JOIN LATERAL (SELECT e.event_type FROM events e WHERE e.run_id = u.run_id AND e.machine = 'run' "
        "AND e.event_type = ANY(%s) ORDER BY e.seq DESC LIMIT 1) AS l ON true "
        "LEFT JOIN LATERAL (SELECT max(e.seq) AS last FROM events e WHERE e.run_id = u.run_id) AS n ON true "
        "LEFT JOIN checkpoints c ON c.run_id = u.run_id AND c.tree_size = n.last + 1 "
        "LEFT JOIN runs r ON r.run_id = u.run_id",
        (list(runs), list(_STATUS_OF)),
    ).fetchall()
    logged = {run: _STATUS_OF.get(event or "", _UNKNOWN) for run, event, _table, _last, _note, _signed in rows}
    for run, _event, _table, last, note, signed in rows:
        # (A run of a store from before checkpoints has none: nothing to hold it to. The writer
        # cannot remove a run's checkpoints: they are append-only.)
        if signed and last is not None and not _signs_the_end(note, last + 1, verifier, run_origin(store_id, run)):
            raise ErasureRefused(
                f"run {run}: the last events of its log (up to seq {last}) are signed by no checkpoint: written by "
                f"someone who could write to the store but not sign; nothing was erased. See `elspeth replay {run} "
                "--check`"
            )
    for run, event, table, _last, _note, _signed in rows:
        if table != logged[run] and (table, event) != (None, None):  # neither: a run with no run events
            raise ErasureRefused(
                f"run {run}: the runs table says {table or 'nothing (no row)'}, its log says {logged[run]}; "
                f"nothing was erased. Find out why with `elspeth replay {run} --check` (a changed projection is "
                f"put right by `elspeth projections rebuild {run}`)"
            )
    for run, _event, _table, last, note, signed in rows:
        # Any status at an end signed by another key is unproved: the writer may append a
        # RunInterrupted to a completed run, to keep its data, and sign it with a key of its own.
        # A run with no checkpoint at all proves nothing either, which only matters when its
        # status would let its data go.
        status = logged[run]
        proved = _signed_by(note, last + 1, verifier, run_origin(store_id, run)) if last is not None else True
        if not proved and (signed or status in _FINAL) and status != _UNKNOWN:
            logged[run] = _unproved(status, note if signed else None, verifier)
    return logged


_UNPROVED = " by its log, "  # what the status of a run whose status is not proved says after it


def unproved(status: str) -> bool:
    """Whether `status` (from `run_statuses`) is that of a run whose log's end is not proved by
    a signature purge can check: its data is kept as a resumable run's, and a request refused."""
    return _UNPROVED in status and status.split(" ", 1)[0] in _STATUS_OF.values()


def _unproved(status: str, note: str | None, verifier: Verifier | None) -> str:
    if note is None:
        return f"{status}{_UNPROVED}with no signed checkpoint to prove it (a run from before checkpoints)"
    try:
        signers = ", ".join(s.label for s in parse_note(note).signatures) or "no key"
    except NoteError:
        signers = "no key"
    mine = verifier.label if verifier is not None else "none here"
    return (
        f"{status}{_UNPROVED}at a checkpoint signed by {signers}, which purge cannot check with the key it was "
        f"given ({mine}); purge checks and signs with one key at a time: that run's with ELSPETH_SIGNING_KEY naming "
        "its .key file, the home's without"
    )


def _signed_by(note: str | None, size: int, verifier: Verifier | None, origin: str) -> bool:
    """Whether `note` is a checkpoint of `origin` over `size` events with a valid signature of `verifier`."""
    return verifier is not None and note is not None and checkpoint_of(note, size, verifier, origin) is not None


def _signs_the_end(note: str | None, size: int, verifier: Verifier | None, origin: str) -> bool:
    """Whether `note` is a checkpoint of `origin` of `size` events, its signature checked when it
    is `verifier`'s key's."""
    if note is None:
        return False
    try:
        signed_by = {s.label for s in parse_note(note).signatures}
    except NoteError:
        return False
    key = verifier if verifier is not None and verifier.label in signed_by else None
    return checkpoint_of(note, size, key, origin) is not None


def erase(db: Database, plan: Plan, reason: str, *, signer: Signer) -> int:
    """Record, seal and delete: a request in one transaction, retention in one per run (per
    `RETENTION_PART` payloads of a run). Returns the number of payloads erased. The records' time and role are the database's (a trigger sets
    them: migration 0009), read first in the same transaction, so that the seal `signer` signs
    over each run's records (`landscape.seal`) holds exactly what the store then keeps."""
    if not reason.strip():
        raise ErasureRefused("an erasure needs a reason (--reason TEXT): it is recorded for good")

    def why(run: str | None) -> str:
        status = plan.resumable.get(run or "")
        if plan.forced and status is not None and unproved(status):
            # What was not proved, not the advice of the CLI's line (nor this machine's key name).
            said = status.split(" ", 1)[0]
            return f"{reason} [--force: the run's log says {said}, and its end was not proved by a signature checked]"
        if plan.forced and status is not None:
            return f"{reason} [--force: the run could still be resumed (status {status})]"
        return reason

    try:
        store_id = PostgresRecorder(db).store_id()
        if plan.kind == "retention":
            cutoff = plan.cutoff
            assert cutoff is not None  # (plan_retention sets it)
            erased = _delete_put_back(db) if plan.put_back else 0
            for run in plan.counts:
                # Payloads kept before they had a run ('') may serve any open run (a resume reads them).
                guarded = [run] if run else sorted(r for r in plan.resumable if r)
                erased += _erase_run(db, run, cutoff, why(run), _Sealer(signer, store_id), guarded, erased > 0)
            return erased
        back = _delete_put_back(db, plan.run_id, plan.put_back_hashes) if plan.put_back else 0
        return back + _erase_payloads(db, plan, why, _Sealer(signer, store_id))
    except PermissionDenied as e:
        # The writer may neither record erasures nor delete payloads (by design: see the roles):
        # the connection, not the store, is what is wrong.
        raise PermissionDenied(
            f"{e}: purge runs as the owner of the tables (the user `elspeth db upgrade` ran as); connect as it "
            "with --database URL (or ELSPETH_DATABASE_URL)"
        ) from e


# The most records one seal signs: an export lists each seal's digests on one line (67 bytes a
# record), which must stay well under the longest line a reader reads (`export.MAX_LINE`).
SEAL_MOST = 1 << 20


class _Sealer:
    """Writes the erasure records of one transaction with their seals (`landscape.seal`): one
    per run (per `SEAL_MOST` records), signed over the records' digests. Records of no run (a
    retention of payloads kept before payloads had one, migration 0007) are sealed under the
    store's `NO_RUN` origin, and their seal kept under run ''."""

    def __init__(self, signer: Signer, store_id: str) -> None:
        self.signer, self.store_id = signer, store_id

    def write(self, conn: Connection, records: list[Erasure]) -> None:
        by_run: dict[str | None, list[int]] = {}  # run -> the positions of its records
        for i, r in enumerate(records):
            by_run.setdefault(r.run_id, []).append(i)
        seals: list[int | None] = [None] * len(records)
        for run, positions in by_run.items():
            for start in range(0, len(positions), SEAL_MOST):
                part = positions[start : start + SEAL_MOST]
                note = sign(self.signer, origin_of(self.store_id, run), [records[i].digest() for i in part])
                found = conn.execute(
                    "INSERT INTO erasure_seals (run_id, note) VALUES (%s, %s) RETURNING id", (run or "", note)
                ).fetchone()
                assert found is not None
                for i in part:
                    seals[i] = found[0]
        # One statement, however many (a retention of a long run: hundreds of thousands). The
        # trigger of migration 0009 sets erased_at and erased_by; both are what `_stamp` read in
        # this transaction, so the digests signed are those of the records stored.
        conn.execute(
            "INSERT INTO erasures (hash, run_id, row_index, kind, reason, erased_at, seal_id) "
            "SELECT h, r, i, k, w, now(), s FROM unnest(%s::bytea[], %s::text[], %s::bigint[], %s::text[], "
            "%s::text[], %s::bigint[]) AS u(h, r, i, k, w, s)",
            (
                [bytes.fromhex(r.hash) for r in records],
                [r.run_id for r in records],
                [r.row_index for r in records],
                [r.kind for r in records],
                [r.reason for r in records],
                seals,
            ),
        )


def _stamp(conn: Connection) -> tuple[datetime, str]:
    """The time and role the erasure trigger will stamp on this transaction's records."""
    found = conn.execute("SELECT pg_catalog.now(), current_user").fetchone()  # (the trigger's `now`: 0012)
    assert found is not None
    return found[0], found[1]


# Payloads a retention erases of one run in one transaction (each part with a seal of its own):
# a retention of a 1,000,000-row run held every record of it at once (about 1 KB each, with
# their digests and the statement's arrays).
RETENTION_PART = 100_000


def _refuse_writers(conn: Connection, runs: Sequence[str | None], *, erased_before: bool = False) -> None:
    """Hold, until this transaction ends, the locks of each run whose data it erases: ErasureRefused
    when a process holds them. The plan checked that no process wrote the run, but a resume may
    have begun since: it keeps its unfinished rows' data in memory, and would carry them on past
    their erasure and record their data again (found by a hostile review: `purge --force`
    started half a second after `resume`). Held, they keep a resume from starting until the
    erasure is committed; it then finds the data erased, and stops saying so. `erased_before`:
    earlier transactions of this purge erased data (retention goes run by run, part by part)."""
    for run in sorted({r for r in runs if r}):
        if not hold_for_transaction(conn, run, "erasing"):
            done = (
                "erasing stopped there (what this purge erased before it stays erased, in the erasure records)"
                if erased_before
                else "nothing was erased"
            )
            held = holding(lock_holder(conn, run))
            raise ErasureRefused(f"run {run} is {held}; {done}: erase it once that has ended")


def _erase_run(
    db: Database, run: str, cutoff: datetime, reason: str, sealer: _Sealer, guarded: Sequence[str], before: bool
) -> int:
    """A run's payloads written before `cutoff`: recorded, sealed and deleted, `RETENTION_PART`
    at a time, each part in one transaction, while no process writes the `guarded` runs. They are
    locked as they are read, so a second purge at the same time erases none of them twice."""
    erased = 0
    while True:
        with driver_errors(f"erasing row data of run {run or '(none)'}"), db.connect() as conn:
            _refuse_writers(conn, guarded, erased_before=before or erased > 0)
            at, by = _stamp(conn)
            hashes = [
                bytes(r[0])
                for r in conn.execute(
                    "SELECT hash FROM payloads WHERE run_id = %s AND recorded_at < %s ORDER BY hash LIMIT %s "
                    "FOR UPDATE",
                    (run, cutoff, RETENTION_PART),
                )
            ]
            if not hashes:
                conn.commit()
                return erased
            sealer.write(conn, [
                Erasure(hash=h.hex(), run_id=run or None, row_index=None, kind="retention", reason=reason, erased_at=at,
                        erased_by=by) for h in hashes
            ])  # fmt: skip
            deleted = conn.execute("DELETE FROM payloads WHERE run_id = %s AND hash = ANY(%s)", (run, hashes)).rowcount
            conn.commit()
        erased += deleted
        if deleted < len(hashes):  # (locked, so none can have gone meanwhile: never the same part again)
            return erased


def _erase_payloads(db: Database, plan: Plan, why: Callable[[str | None], str], sealer: _Sealer) -> int:
    """A request's payloads: those of them still in the store (another purge may have erased some
    since the plan was made), locked, then recorded, sealed and deleted in one transaction."""
    planned = sorted(plan.payloads)
    runs = [plan.payloads[h][0] or "" for h in planned]
    with driver_errors("erasing row data"), db.connect() as conn:
        _refuse_writers(conn, runs)
        at, by = _stamp(conn)
        # By run and hash, the payloads' key; a payload from before 0007 is kept under run ''.
        here = {
            bytes(r[0]).hex(): r[1]
            for r in conn.execute(
                "SELECT p.hash, p.run_id FROM payloads AS p JOIN unnest(%s::text[], %s::bytea[]) AS u(run_id, hash) "
                "ON p.hash = u.hash AND p.run_id IN (u.run_id, '') ORDER BY p.run_id, p.hash FOR UPDATE OF p",
                (runs, [bytes.fromhex(h) for h in planned]),
            )
        }
        hashes = [h for h in planned if h in here]
        if not hashes:
            conn.commit()
            return 0
        # A payload kept before payloads had a run (unsalted then) may be the same bytes in other
        # runs, which reference it as well: its record is of no run, which every run reads, so
        # that theirs verify too, the data erased in each (found by a hostile review: a record
        # of this run only, and another run's log no longer verified, its data "missing").
        shared = {h for h in hashes if here[h] == ""}
        sealer.write(conn, [
            Erasure(hash=h, run_id=None if h in shared else plan.payloads[h][0],
                    row_index=None if h in shared else plan.payloads[h][1], kind=plan.kind,
                    reason=why(plan.payloads[h][0]), erased_at=at, erased_by=by) for h in hashes
        ])  # fmt: skip
        erased = conn.execute(
            "DELETE FROM payloads AS p USING unnest(%s::text[], %s::bytea[]) AS u(run_id, hash) "
            "WHERE p.hash = u.hash AND p.run_id IN (u.run_id, '')",
            ([plan.payloads[h][0] or "" for h in hashes], [bytes.fromhex(h) for h in hashes]),
        ).rowcount
        conn.commit()
    return erased


def _hashes(names: Collection[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in names]


def _delete_put_back(db: Database, run_id: str | None = None, hashes: Collection[str] = ()) -> int:
    """Delete the payloads put back after their erasure (`_PUT_BACK`): of `run_id`'s `hashes`, or
    every one in the store. Their records stand for them: no new record is written."""
    where, params = (_PUT_BACK_OF, (run_id, _hashes(hashes))) if run_id is not None else ("", ())
    with driver_errors("deleting payloads put back after their erasure"), db.connect() as conn:
        deleted = conn.execute(f"DELETE {_PUT_BACK}{where}", params).rowcount
        conn.commit()
    return deleted


def vacuum_payloads(db: Database) -> bool:
    """VACUUM the payloads table, so that the space of erased rows is reused (and so overwritten)
    sooner. Their bytes stay in the table's files until then, and in the WAL and backups (see
    docs/erasure.md). VACUUM cannot run in a transaction, hence a connection of its own. False
    when this role may not: PostgreSQL then skips the table with a warning, no error."""
    with driver_errors("vacuuming the payloads table"), db.connect(autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = to_regclass('payloads')"
        ).fetchone()
        if not row or not row[0]:
            return False
        conn.execute("VACUUM payloads")
    return True
