"""Running a pipeline: a fresh run and a resumed run are the same code.

`execute` folds the run's stored events (none for a new run) into a `RunFold`, puts every
non-terminal token back where the log says it is, continues the source after its cursor, and
carries on. Durability points commit the buffered events once sinks are durable.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import shlex
import socket
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from engine import signing
from engine.checks import output_problems
from engine.clock import Clock, SystemClock
from engine.dag import Dag, DagError, Shape, build_dag, row_shapes
from engine.errors import ResumeRefused, RunFailedError, RunRefused, RunStopped
from engine.places import layouts_changed, places_gone
from engine.plugins.protocol import PluginConfigError, PluginError, Sink, Source, SourceItem, WriterClaim, at_node
from engine.plugins.registry import build_plugin
from engine.plugins.schema import Schema, type_locked
from engine.processor import Nodes, Processor, Work
from engine.secrets import fingerprint
from engine.settings import AggregationSettings, LoadedSettings, SettingsError, TransformSettings
from engine.sinkwriter import digest
from engine.stopping import Stop
from landscape import faults
from landscape.canonical import decode_row
from landscape.checkpoint import run_origin
from landscape.commits import holding
from landscape.db import Database
from landscape.errors import CorruptLog, LandscapeError
from landscape.fold import RunFold
from landscape.merkle import MerkleAccumulator
from landscape.notary import Notary, Witnessed, read_run_witness, witness_path
from landscape.note import NoteError, Verifier, parse_note
from landscape.payloads import load_payloads
from landscape.postgres import OpenPosition, PostgresRecorder, Sending
from landscape.queries import metrics_at, run_summary
from landscape.verify import Verification, verify_checkpoints
from landscape.verify_store import unsigned_end, verify_log
from landscape.visible import one_line
from statecharts import events as ev
from statecharts.compiled import EVENT_MACHINE
from statecharts.machines import RUN_FINAL, RUN_OPEN, BatchState, RunState

DEFAULT_COMMIT_EVERY = 1000
COMMIT_SECONDS = 1.0
# Also a durability point once this much is buffered (after the row that passed it): what a batch
# holds is in memory until its commit, and rows that expand into many would otherwise hold a
# thousand rows' worth of children (a hostile review: 1 GB for a 117 KB input).
COMMIT_BYTES = 64 * 2**20
GIL_SLICE_SECONDS = 0.000002  # while a run is written (see Execution.__init__)


@dataclass
class Pipeline:
    """A pipeline's settings with its plugins built."""

    loaded: LoadedSettings
    dag: Dag
    source: Source
    nodes: Nodes
    decls: list[ev.NodeDecl]

    def close(self) -> None:
        self.source.close()


def build_pipeline(loaded: LoadedSettings) -> Pipeline:
    """Build the DAG and every plugin. Raises SettingsError naming the key path of a bad option."""
    s = loaded.settings
    errors, dag, source, built, sinks = _build(loaded)
    if errors or dag is None:
        raise SettingsError(errors)
    on_vf = str(s.source.options.get("on_validation_failure", "discard"))
    nodes = Nodes(
        dag=dag,
        transforms={t.name: (t, built[t.name]) for t in s.transforms},
        gates={g.name: (g, loaded.gate_conditions[g.name]) for g in s.gates},
        coalesces={c.name: c for c in s.coalesce},
        aggregations={a.name: (a, built[a.name], loaded.trigger_conditions.get(a.name)) for a in s.aggregations},
        sinks=sinks,
        on_validation_failure=on_vf,
        coalesce_of_branch={b: c for c, bs in dag.coalesce_branches.items() for b in bs},
        write_failure={name: sk.on_write_failure for name, sk in s.sinks.items()},
        retry=s.retry,
        unparsed_keys=getattr(source, "UNPARSED_KEYS", Nodes.unparsed_keys),
    )
    decls = [
        ev.NodeDecl(name=name, kind=kind, plugin=plugin, config_hash=_hash(cfg))
        for name, kind, plugin, cfg in _node_table(loaded)
    ]
    return Pipeline(loaded, dag, source, nodes, decls)


def pipeline_problems(loaded: LoadedSettings) -> list[str]:
    """What is wrong with the DAG and the plugin options (one line each), without running."""
    return _build(loaded)[0]


def _build(loaded: LoadedSettings) -> tuple[list[str], Dag | None, Any, dict[str, Any], dict[str, Sink]]:
    """The DAG and the plugins, and every problem found building them (DAG and options together)."""
    s = loaded.settings
    errors: list[str] = []
    dag: Dag | None = None
    try:
        dag = build_dag(s)
    except DagError as e:  # reported together with any bad plugin options below
        errors.extend(f"{loaded.path}: {m}" for m in e.errors)
    built: dict[str, Any] = {}

    def make(kind: str, plugin: str, options: dict[str, Any], where: str) -> Any:
        try:
            return build_plugin(kind, plugin, options)
        except PluginConfigError as e:
            path = f"{where}.options.{e.path}" if e.path else f"{where}.plugin"
            errors.append(f"{loaded.path}: {path}: {e.message}")
            return None

    source = make("source", s.source.plugin, s.source.options, "source")
    for i, t in enumerate(s.transforms):
        built[t.name] = make("transform", t.plugin, t.options, f"transforms[{i}]")
        joined = dag.on_joined_branch.get(t.name) if dag is not None else None
        if joined is not None and getattr(built[t.name], "expands", False):
            errors.append(
                f"{loaded.path}: transforms[{i}].plugin: {t.plugin} makes several rows of one, on branch "
                f"'{joined[0]}', which coalesce '{joined[1]}' joins one row per branch: all but one would fail "
                "there; allowed: the expansion before the fork or after the coalesce"
            )
    for i, a in enumerate(s.aggregations):
        built[a.name] = make("aggregation", a.plugin, a.options, f"aggregations[{i}]")
        errors.extend(f"{loaded.path}: aggregations[{i}].{m}" for m in _batch_shape_problems(a, built[a.name]))
    sinks: dict[str, Sink] = {}
    for name, sk in s.sinks.items():
        sinks[name] = make("sink", sk.plugin, sk.options, f"sinks.{name}")
    if dag is not None:
        errors.extend(f"{loaded.path}: {m}" for m in _undeclared_fields(loaded, source, built))
    errors.extend(output_problems(loaded, source, sinks))  # no sink may destroy input, output or the audit trail
    return errors, dag, source, built, sinks


def _batch_shape_problems(a: AggregationSettings, plugin: Any) -> list[str]:
    """An aggregation whose plugin makes one row of each batch (`one_row_per_batch`), set to want
    another count of rows: every batch would fail, in a run that completes (a careless user's
    review: `batch_stats` in passthrough mode, or with expected_output_count 2)."""
    if not getattr(plugin, "one_row_per_batch", False):
        return []
    problems = []
    makes = f"{a.plugin} makes one row of each batch"
    if a.expected_output_count is not None and a.expected_output_count != 1:
        problems.append(
            f"expected_output_count: {a.expected_output_count}, but {makes}, so every batch would fail; allowed: 1, "
            "or no expected_output_count"
        )
    # (Only a count alone is sure to make batches of more than one row: a condition or a timeout
    # may flush each row by itself.)
    only_count = a.trigger.condition is None and a.trigger.timeout_seconds is None
    if a.output_mode == "passthrough" and only_count and (a.trigger.count or 0) > 1:
        problems.append(
            f"output_mode: passthrough continues each row of a batch as its own output, but {makes}, so every batch "
            "of more than one row would fail; allowed: output_mode transform (one new row of each batch)"
        )
    return problems


def _undeclared_fields(loaded: LoadedSettings, source: Any, built: dict[str, Any]) -> list[str]:
    """Steps that see the source's rows behind a schema of mode fixed (exactly these fields), as
    gates and transforms whose output fields are known left them, naming a field none of those rows
    can hold. A misspelt field, or one a field_mapper renamed, would otherwise fail every row
    (`row['amont']`, a strict transform), route every row one way (`row.get('amont', 0)`) or leave
    every row as it was (truncate, field_mapper)."""
    schema = getattr(source, "schema", None)
    if not isinstance(schema, Schema) or schema.mode != "fixed":
        return []
    s = loaded.settings

    def transform(
        name: str, fields: tuple[str, ...], certain: frozenset[str]
    ) -> tuple[tuple[str, ...], frozenset[str]] | None:
        plugin = built.get(name)
        output_fields = getattr(plugin, "output_fields", None)
        if output_fields is None:
            return None
        made = tuple(output_fields(fields))
        # (A transform that does not say which fields every output row holds: those it keeps by name.)
        certain_fields = getattr(plugin, "certain_fields", None)
        held = frozenset(certain_fields(fields, certain)) if certain_fields is not None else certain
        return made, held & frozenset(made)

    shapes = row_shapes(s, [f.name for f in schema.fields], transform)
    problems = []

    def check(where: str, node: str, shape: Shape, names: dict[str, str]) -> None:
        fields = ", ".join(shape.fields)
        for name, key in names.items():
            # (A field_mapper's dotted name is a path into the field its first part names.)
            if name in shape.fields or name.split(".")[0] in shape.fields:
                continue
            if shape.changed_by:
                why = (
                    f"which no row reaching it can hold: behind the source's schema (mode fixed) and "
                    f"{', '.join(shape.changed_by)}, its rows hold only ({fields}); allowed: those fields"
                )
            else:
                why = (
                    f"which the source's schema (mode fixed) does not declare, so no row reaching it has it; allowed: "
                    f"the declared fields ({fields})"
                )
            problems.append(f"{where}{key} ({node}): names '{name}', {why}")

    for i, g in enumerate(s.gates):
        condition = loaded.gate_conditions.get(g.name)
        if (shape := shapes.get(g.input)) is not None and condition is not None and condition.fields:
            check(f"gates[{i}].", f"gate '{g.name}'", shape, {f: "condition" for f in sorted(condition.fields)})
    steps: list[tuple[str, str, TransformSettings | AggregationSettings]] = [
        *((f"transforms[{i}]", "transform", t) for i, t in enumerate(s.transforms)),
        *((f"aggregations[{i}]", "aggregation", a) for i, a in enumerate(s.aggregations)),
    ]
    for where, kind, n in steps:
        if (shape := shapes.get(n.input)) is not None:
            plugin = built.get(n.name)
            check(f"{where}.options.", f"{kind} '{n.name}'", shape, getattr(plugin, "named_fields", {}))
            field_problems = getattr(plugin, "field_problems", None)
            if field_problems is not None:
                problems += (
                    f"{where}.options.{k} ({kind} '{n.name}'): {m}"
                    for k, m in field_problems(shape.fields, shape.certain).items()
                )
    return problems


def _node_table(loaded: LoadedSettings) -> Iterator[tuple[str, str, str, Any]]:
    s = loaded.settings
    yield "source", "source", s.source.plugin, s.source
    for t in s.transforms:
        yield t.name, "transform", t.plugin, t
    for g in s.gates:
        yield g.name, "gate", "gate", g
    for c in s.coalesce:
        yield c.name, "coalesce", "coalesce", c
    for a in s.aggregations:
        yield a.name, "aggregation", a.plugin, a
    for name, sk in s.sinks.items():
        yield name, "sink", sk.plugin, sk


def _hash(obj: Any) -> str:
    # Keyed (HMAC): a node's options may hold secrets, and a plain hash of them could be guessed.
    return fingerprint(msgspec.json.encode(obj, order="deterministic").decode())


def new_run_id(clock: Clock) -> str:
    # 32 random bits: two runs started in one second (or under one fake clock, as tests do by
    # the hundred) share an id with a chance of n²/2³³. A fresh run that finds its id taken is
    # refused under the run's lock (`changed_since_read`), never written onto the other's log.
    stamp = datetime.fromtimestamp(clock.now(), UTC).strftime("%Y%m%dT%H%M%S")
    return f"run-{stamp}-{secrets.token_hex(4)}"


@dataclass
class Outcome:
    run_id: str
    status: str
    fold: RunFold
    records_before: int = 0  # source records the run had read before this process took it up
    # resumed with --force on an input that changed: its records from `records_before` on were
    # read, those before it not (the run had read those records before the resume)
    input_changed: bool = False
    # what the command says besides its summary (`Execution.cut_and_lost`)
    notes: tuple[str, ...] = ()


ProgressFn = Callable[[RunFold], None]


class Execution:
    """One process's work on one run: fresh (empty fold) or resumed (folded from the log)."""

    def __init__(
        self,
        db: Database,
        pipeline: Pipeline,
        run_id: str,
        fold: RunFold,
        *,
        clock: Clock | None = None,
        commit_every: int = DEFAULT_COMMIT_EVERY,
        progress: ProgressFn | None = None,
        stop: Stop | None = None,
        home: str | None = None,
        verified: tuple[MerkleAccumulator, bytes] | None = None,
        sending: Sending = "thread",
    ) -> None:
        self.db = db
        self.p = pipeline
        self.run_id = run_id
        self.fold = fold
        self.clock = clock or SystemClock()
        self.commit_every = max(1, commit_every)
        self.progress = progress
        self.stop = stop or Stop()
        self.recorder = PostgresRecorder(db)
        self.writer = self.recorder.open_writer(
            run_id,
            sending=sending,
            notary=_notary(self.recorder, pipeline, home),
            verified=verified,  # the resume's reading of the log: its tree is not rebuilt
        )
        as_read = self.writer.next_seq == fold.last_seq + 1
        problem = (
            changed_since_read(db, run_id, fold, self.writer.next_seq) if verified is not None or not as_read else None
        )
        if problem:
            self.writer.close()
            raise ResumeRefused(problem)
        self.proc = Processor(
            pipeline.nodes, fold, self._emit, self.writer.put_payload, self.clock, self.writer.still_writer
        )
        # A writer's sender thread needs the GIL for a moment after each network wait: while
        # it sends a COPY, after each few kilobytes the server reads. With Python's default 5 ms
        # slices it waited up to that long each time behind this thread's work, and this thread
        # then waited for its commit: measured, 30 % of a linear run's time. Shorter was faster
        # down to 2 µs (linear, 50,000 rows: 0.1 ms 6,800-7,000 rows/s, 10 µs 7,700-8,000,
        # 2 µs 8,400-8,900). Short slices only cost anything when both threads are runnable, as
        # they are while the sender chains a batch (`commits.Chain.seal`, a few µs per event):
        # in-process runs pay that; a sender process (`elspeth run`) needs none of this.
        # Restored by close.
        self._gil_slice = sys.getswitchinterval()
        # Per file sink that a resume cuts back: (path, durable position, bytes cut, their first
        # `_CUT_KEPT`), to be held to what the resume writes there (`cut_and_lost`).
        self._cut: dict[str, tuple[Path, int, int, bytes]] = {}
        if sending == "thread":
            sys.setswitchinterval(GIL_SLICE_SECONDS)

    def _emit(self, entity_id: str, event: ev.EventBase) -> None:
        # The fold checks the transition is legal before the event is recorded.
        self.fold.apply(self.writer.next_seq, entity_id, event)
        self.writer.append(EVENT_MACHINE[type(event).__name__], entity_id, event)

    def durability_point(self, *, wait: bool = False) -> None:
        self.fold.prune_resolved()  # between rows: only held and buffered tokens are live
        self.proc.flush_sinks(after_flush=lambda: faults.reached("sink_flush"))
        self.writer.commit(wait=wait)

    # -- the run ---------------------------------------------------------------------------------

    def start(self, *, resumed: bool, forced: bool, fingerprint: str, new_settings: bool = False) -> None:
        """Record the start (or resumption) and open the sinks. `new_settings`: a resume that
        continues under other settings than the log's (changed text, allowed by --force, or the
        same text from another file), recorded with RunResumed."""
        emit = self._emit
        self._hold_sink_files(resumed)
        # Who writes the sinks from here: a generation drawn under the run's lock, and whom to name.
        who = f"pid {os.getpid()} on {socket.gethostname()}"
        claim = WriterClaim(self.writer.generation(), who, self.writer.still_writer)
        for sink in self.p.nodes.sinks.values():
            fence_as = getattr(sink, "fence_as", None)
            if fence_as is not None:
                fence_as(claim)
        if not resumed:
            self._refuse_to_strand_open_runs()  # before anything is recorded: a refused run leaves no trace
            self._refuse_to_read_a_crash_tail()
            loaded = self.p.loaded
            emit(
                self.run_id,
                ev.RunCreated(
                    settings_path=str(loaded.path),
                    settings_hash=loaded.text_hash,
                    settings=loaded.redacted,
                    source_fingerprint=fingerprint,
                    nodes=self.p.decls,
                    elspeth_version=_version(),
                    working_dir=os.getcwd(),
                ),
            )
            emit(self.run_id, ev.RunStarted())
        else:
            # A sink these settings add (a resume under other settings) starts appending as a new
            # run's does: the same check, for those sinks only.
            self._refuse_to_strand_open_runs(only=set(self.p.nodes.sinks) - set(self.fold.sink_positions))
            self._refuse_to_cut_later_rows()
            try:  # a sink that cannot continue where the log says refuses the resume, unrecorded
                self._give_first_rows()
                self._open_sinks()
            except PluginError as e:
                raise ResumeRefused(f"run {self.run_id} cannot be resumed: {e}") from e
            if self.fold.status in RUN_OPEN:
                # Its writer is gone (we hold the lock): record that before resuming.
                emit(self.run_id, ev.RunInterrupted(reason="writer lost"))
            loaded = self.p.loaded
            emit(
                self.run_id,
                ev.RunResumed(
                    source_fingerprint=fingerprint,
                    forced=forced,
                    settings_path=str(loaded.path) if new_settings else None,
                    settings_hash=loaded.text_hash if new_settings else None,
                    settings=self.p.loaded.redacted if new_settings else None,
                    nodes=self.p.decls if new_settings else None,
                    working_dir=os.getcwd() if os.getcwd() != self.fold.working_dir else None,
                ),
            )
        try:
            if not resumed:
                self._open_sinks()
            for name, sink in self.p.nodes.sinks.items():
                if name not in self.fold.sink_positions:
                    # The baseline: what was in the file before this run wrote anything.
                    position = self.proc.flush_sink(name)
                    emit(self.run_id, ev.SinkFlushed(sink=name, position=position, rows=0, location=sink.location(),
                                                     sha256=digest(sink)))  # fmt: skip
            self._reenter()
        except PluginError as e:
            # Recorded like any failure: the run exists, says why it stopped, and is resumable.
            self._fail(str(e), e)
            raise RunFailedError(self.run_id, str(e)) from e
        self.writer.commit()

    def _refuse_to_cut_later_rows(self) -> None:
        """A resume cuts a file sink back to the run's durable position: what follows is taken
        for what the crash left. Another run that wrote to the file since (an append-mode log
        shared by runs) would lose the rows its log says it wrote. And a sink the log has no
        position for starts its file anew: under another name (settings changed with --force)
        than the sink that made rows durable in that file, those rows would go."""
        others: list[tuple[str, str, str]] | None = None
        for name, sink in self.p.nodes.sinks.items():
            path, position = getattr(sink, "path", None), self.fold.sink_positions.get(name)
            if not isinstance(path, Path):
                continue
            if position is None:
                self._refuse_to_start_anew(name, path)
                continue
            try:
                size = path.stat().st_size
            except OSError:
                continue  # the sink says what is wrong with it when it opens
            if size <= position:
                continue
            # An append-mode sink pointed at another file than the run wrote (settings changed
            # with --force) while at position 0: the digest of no bytes proves nothing, and the
            # file's own bytes would be cut to nothing, where a new run appends after them. (At a
            # position above 0 the digest shows the file starts with the run's bytes: a copy,
            # whose tail is the crash's. A sink in mode `write` starts its file anew anyway.)
            wrote = self.fold.sink_locations.get(name, "")
            recorded = _resolved(wrote, self.fold.working_dir)
            moved = recorded != path.resolve() and not _same_file(recorded, path)
            if moved and position == 0 and getattr(sink, "mode", None) == "append":
                raise ResumeRefused(
                    f"run {self.run_id} cannot be resumed: sink '{name}': {path} holds {size - position} bytes after "
                    f"this run's durable position ({position} bytes), but the run wrote to {wrote}, not to this file: "
                    "they are not what its crash left, and resuming would cut them off. Give the sink back its file, "
                    "or move this one aside"
                )
            # Locations as each run's settings spell them, resolved in the folder it ran in.
            # Since its last flush, not its last event: a run that failed after another run wrote
            # its file (a second run started before this one's first write) recorded its failure
            # after that run's flushes, and measured from the failure they were not "since".
            if others is None:
                others = self.recorder.flushed_since(self.run_id, its_last_flush=True)
            other = _run_in(others, path)
            digest = self.fold.sink_digests.get(name)
            if other is not None and digest is not None and _digests_at(path, [position]).get(position) != digest:
                # Not rows after this run's: the file was started anew (a sink in mode `write`).
                raise ResumeRefused(
                    f"run {self.run_id} cannot be resumed: sink '{name}': {path} no longer holds this run's output: "
                    f"its first {position} bytes are not those this run made durable, and run {other} has written "
                    f"the file since (replaced it). Put this run's file back to resume it, or end this run for good: "
                    f"`elspeth abandon {self.run_id} --reason TEXT`"
                )
            if other is not None:
                raise ResumeRefused(
                    f"run {self.run_id} cannot be resumed: sink '{name}': {path} holds rows after this run's durable "
                    f"position ({position} bytes) that run {other} wrote since; resuming would cut them off. Move "
                    "the file aside (and put the other run's rows back after), or start a new run"
                )
            if position > 0 or getattr(sink, "mode", None) == "append":  # (writing anew at 0: an older file, replaced)
                head = _bytes_at(path, position, _CUT_KEPT)
                if not _an_array_end(sink, head):
                    self._cut[name] = (path, position, size - position, head)

    def cut_and_lost(self, *, ended: bool) -> list[str]:
        """What the resume cut from its file sinks (`_refuse_to_cut_later_rows`) and did not
        write again. A crash leaves after the durable position the start of what the resume
        writes there, byte for byte (a resume writes what the uninterrupted run would have); bytes
        it then writes otherwise were not the crash's (another process's, or an edit), and are
        gone from the file. Said, not refused: no resume can tell them from a crash's before it
        writes; nor, when the resumed run sends that sink no row (its rows went elsewhere: a
        fallback), whether the crash's rows were those. `ended`: the run is over, so bytes cut that
        it did not write again are gone too."""
        notes = []
        for name, (path, position, count, head) in self._cut.items():
            now = _bytes_at(path, position, len(head))
            short = ended and (_regular_file_size(path) or 0) < position + count
            if now != head[: len(now)] or short:
                notes.append(
                    f"sink '{name}': the resume cut {count} bytes that {path} held after the run's last durable "
                    f"position ({position} bytes), and did not write them there again: rows the crash left that went "
                    "elsewhere this time, or bytes another process or an edit put there, which are lost"
                )
        return notes

    def _refuse_to_strand_open_runs(self, only: set[str] | None = None) -> None:
        """A new run appends after what its sink file holds. A run of this store that is not
        completed continues the file at its durable position when resumed; rows appended there
        first would strand it (its resume refuses to cut them: `_refuse_to_cut_later_rows`), and
        would follow whatever its crash left after that position, rows no log accounts for (some
        of them the new run writes again). So the new run refuses, before recording anything.

        Refused too when the file ends exactly at that run's position (no unrecorded bytes): the
        rows appended would strand it all the same, and what is left of its input would never be
        written; a run that is not to go on is ended with `elspeth abandon` (or its file moved
        aside). Not refused: a run abandoned or completed (`open_positions` has none), a file
        that no longer starts with that run's bytes (moved aside or replaced: its resume refuses
        it anyway), a run that another run appended after already (stranded before, nothing
        changes), a missing file, a FIFO or a device (no rows stay in them). A sink in mode `write`
        replaces the file: refused the same way when that would destroy rows an unfinished run made
        durable there (a fresh `run` where `resume` was meant), not when that run has none there.
        `only`: these sinks (a resume's new ones), not all."""
        positions: list[OpenPosition] | None = None
        for name, sink in self.p.nodes.sinks.items():
            if only is not None and name not in only:
                continue
            if getattr(sink, "if_exists", None) == "replace":  # (a database sink)
                if positions is None:
                    positions = self.recorder.open_positions()
                self._refuse_to_drop_open_rows(name, sink, positions)
                continue
            path, mode = getattr(sink, "path", None), getattr(sink, "mode", None)
            if mode not in ("append", "write") or not isinstance(path, Path):
                continue
            if _kept_nothing(path):
                continue  # a FIFO or a device (/dev/null) keeps no rows: runs may share it
            if positions is None:
                positions = self.recorder.open_positions()
            self._refuse_to_share_a_file_being_written(name, path, positions, mode == "write")
            size = _regular_file_size(path)
            if size is None:
                continue
            # (Mode `write` replaces the file: a run with nothing durable in it loses nothing.)
            here = [
                h for h in positions
                if h.run_id != self.run_id and h.position <= size and (mode == "append" or h.position > 0)
                and _same_file(_resolved(h.location, h.working_dir), path)
            ]  # fmt: skip
            digests = _digests_at(path, [h.position for h in here if h.sha256 is not None])
            for held in here:
                # Without a digest (recorded before migration 0008) a file that long may be the run's.
                if held.sha256 is not None and digests.get(held.position) != held.sha256:
                    continue  # the file no longer starts with that run's bytes: moved aside, replaced
                if size > held.position and _run_in(self.recorder.flushed_since(held.run_id), path) is not None:
                    continue
                alive = self.recorder.writer_alive(held.run_id)
                if held.run_id not in self._open_runs():
                    continue  # it ended since the positions were read (completed, or abandoned): not stranded
                raise RunRefused(self._stranded(name, path, size, held, alive, mode == "write"))
            if mode == "append":
                self._refuse_to_append_after_a_crash_tail(name, path, size)

    def _hold_sink_files(self, resumed: bool) -> None:
        """Hold each sink file's lock in the store for as long as this run may write it, or refuse
        before recording anything. The checks after ask the store what other runs recorded: two
        runs (or resumes) starting at one moment, each before the other had recorded anything,
        both went on to the same file (a review). A file is held by its folder and name, and by
        itself when it is there (another spelling of it, a link), on this machine (`_places`);
        a database sink's table by its database and name (`_table_places`), shared by appending
        runs. The locks are taken in one order for all runs, so that two runs of the same files
        each holding one cannot both be refused. A FIFO or a device is shared (it keeps no rows)."""
        places: dict[str, tuple[str, bool]] = {}  # lock -> (sink, shared)
        for name, sink in self.p.nodes.sinks.items():
            path, mode = getattr(sink, "path", None), getattr(sink, "mode", None)
            if_exists = getattr(sink, "if_exists", None)
            if if_exists in ("append", "replace"):  # (a database sink)
                # Appending runs share a table; one that drops it has it alone (a review: a run
                # replacing it at the moment another appended deleted the other's rows).
                shared = if_exists == "append"
                for place in _table_places(sink):
                    places[place] = (name, shared and places.get(place, (name, True))[1])
            elif mode in ("append", "write") and isinstance(path, Path) and not _kept_nothing(path):
                places.update(dict.fromkeys(_places(path), (name, False)))
        for place in sorted(places):
            holder = self.writer.hold(place, shared=places[place][1])
            if holder is None:
                continue
            name = places[place][0]
            sink = self.p.nodes.sinks[name]
            path = getattr(sink, "path", None)
            if not resumed:  # a run that has recorded its start is named, and what it holds there
                positions = self.recorder.open_positions()
                if isinstance(path, Path):
                    self._refuse_to_share_a_file_being_written(
                        name, path, positions, getattr(sink, "mode", None) == "write"
                    )
                elif getattr(sink, "if_exists", None) == "replace":
                    self._refuse_to_drop_open_rows(name, sink, positions)
            what = path if isinstance(path, Path) else f"table {sink.location()}"
            why = (
                f"sink '{name}': {what} is being written right now by another run of this audit store, which started "
                f"(or resumed) as this one did (see `elspeth runs`): its lock is held by {holder}; wait for it to end, "
                f"and {'resume this run' if resumed else 'run'} again. Nothing was recorded"
            )
            raise ResumeRefused(f"run {self.run_id} cannot be resumed: {why}") if resumed else RunRefused(why)

    def _refuse_to_share_a_file_being_written(
        self, name: str, path: Path, positions: list[OpenPosition], replace: bool
    ) -> None:
        """A run that is writing this sink's file right now, whatever it has made durable there
        (nothing yet, or no file yet: a file sink opens its file at its first write). Two runs at
        one file lose rows either way: the first to write fails or, in mode `write`, cuts what
        the other wrote and completed saying it holds (a review)."""
        for held in positions:
            if held.run_id == self.run_id or not _same_place(_resolved(held.location, held.working_dir), path):
                continue
            if self.recorder.writer_alive(held.run_id) and held.run_id in self._open_runs():
                raise RunRefused(self._stranded(name, path, held.position, held, True, replace))

    def _refuse_to_read_a_crash_tail(self) -> None:
        """A pipeline reading what another run of this store wrote (B reads A's output) read the
        rows A's crash left after its last durable position too, which A's log says were never
        written (its resume cuts them and writes them again, maybe otherwise): B's trail vouched
        for rows with no provenance (a review). Refused while that file holds such bytes, or while
        its run is still writing it; a file that ends where its run made it durable is read."""
        path = getattr(self.p.source, "path", None)
        size = _regular_file_size(path) if isinstance(path, Path) else None
        if not isinstance(path, Path) or size is None:
            return
        positions = [*self.recorder.open_positions(), *self.recorder.abandoned_positions()]
        here = [h for h in positions if _same_file(_resolved(h.location, h.working_dir), path)]
        digests = _digests_at(path, [h.position for h in here if h.position < size])  # (one read of the file)
        for held in here:
            ended = held.status == RunState.ABANDONED
            alive = not ended and self.recorder.writer_alive(held.run_id)
            if not alive and (held.position >= size or not self._still_its_file(held, path, digests)):
                continue
            if alive:
                why = f"which run {held.run_id} is still writing; wait for it to end (see `elspeth runs`)"
            else:
                how = (f"cut them (`truncate -s {held.position} -- {shlex.quote(str(path))}`)" if ended
                       else f"resume that run first (`elspeth resume {held.run_id}`), or abandon it and cut them")  # fmt: skip
                state = held.status if ended or held.status not in RUN_OPEN else "crashed"
                why = (
                    f"which holds {size - held.position} bytes after what run {held.run_id} ({state}) made durable "
                    f"there ({held.position} bytes): rows its crash left, which no run's log accounts for; {how}"
                )
            raise RunRefused(f"source: the input {path} is a sink's output {why}, and run again. Nothing was recorded")

    def _still_its_file(self, held: OpenPosition, path: Path, digests: dict[int, str]) -> bool:
        """Whether the file at `path` is the one `held`'s run left: the same file as its sink's,
        still starting with the bytes it made durable (by their digest, when recorded), and
        written by no other run since its last flush (a rerun that replaced it, say: the bytes
        after are that run's then). Never at an abandoned run's position 0: the digest of no bytes
        is every file's, and a file restored or made anew there was taken for its crash tail and
        its cut prescribed (a review); a crashed run's still is (its resume decides). `digests`:
        the file's, at least at `held.position` (`_digests_at`)."""
        if (held.position == 0 and held.status == RunState.ABANDONED) or not _same_file(
            _resolved(held.location, held.working_dir), path
        ):
            return False
        if held.sha256 is not None and digests.get(held.position) != held.sha256:
            return False
        return _run_in(self.recorder.flushed_since(held.run_id, its_last_flush=True), path) is None

    def _refuse_to_drop_open_rows(self, name: str, sink: Any, positions: list[OpenPosition]) -> None:
        """`if_exists: replace` drops the sink's table when a run starts. Rows a run of this store
        that has not ended made durable there would go with it: a running run went on into the
        new table and completed saying they were all there (a review). Refused, as a file is;
        `replace_rows_of_other_runs` is for the rows of runs that ended."""
        for held in positions:
            if held.run_id == self.run_id or held.position <= 0 or not _same_table(held, sink):
                continue
            alive = self.recorder.writer_alive(held.run_id)
            if held.run_id not in self._open_runs():
                continue  # it ended meanwhile
            state = "is still running" if alive else f"{'crashed' if held.status in RUN_OPEN else held.status}"
            raise RunRefused(
                f"sink '{name}': table {sink.location()} holds {held.position} rows run {held.run_id} made durable; "
                f"that run {state} and has not ended, and if_exists: replace would drop them (replace_rows_of_other_runs "
                f"covers the rows of ended runs only). {'Wait for it to end' if alive else 'Resume it first'} "
                f"(`elspeth {'runs' if alive else 'resume ' + held.run_id}`), or end it (`elspeth abandon {held.run_id} "
                "--reason TEXT`), and run again. Nothing was recorded"
            )

    def _refuse_to_append_after_a_crash_tail(self, name: str, path: Path, size: int) -> None:
        """An abandoned run's file may end in bytes its crash left after its last durable position,
        which no log accounts for (`elspeth abandon` leaves them, and says so). Appended after,
        they would sit among audited rows, the new run's digest of the file covering them, and a
        rerun of the same input duplicating them (a review). Refused, naming the cut that drops
        them, unless some run has written the file since (they were adopted then already)."""
        here = [h for h in self.recorder.abandoned_positions() if h.position < size and h.sha256 is not None]
        here = [h for h in here if _same_file(_resolved(h.location, h.working_dir), path)]
        digests = _digests_at(path, [h.position for h in here])  # (one read of the file for them all)
        for held in here:
            if not self._still_its_file(held, path, digests):
                continue
            raise RunRefused(
                f"sink '{name}': {path} holds {size - held.position} bytes after what run {held.run_id} (abandoned) "
                f"made durable ({held.position} bytes): rows its crash left, which no run's log accounts for, and "
                "which rows appended now would seem to vouch for. Cut them (`truncate -s "
                f"{held.position} -- {shlex.quote(str(path))}`) or move the file aside, and run again. Nothing was recorded"
            )

    def _open_runs(self) -> set[str]:
        """The runs that hold a position in some sink and have not ended, as the store says now."""
        return {h.run_id for h in self.recorder.open_positions()}

    def _stranded(self, name: str, path: Path, size: int, held: OpenPosition, alive: bool, replace: bool) -> str:
        run = held.run_id
        doing = "replacing it (mode write)" if replace else "appending to it"
        if alive:
            return (
                f"sink '{name}': {path} is being written by run {run}, which is still running; {doing} now "
                "would fail or strand that run. Wait for it to end (see `elspeth runs`); nothing was recorded"
            )
        state = "crashed" if held.status in RUN_OPEN else str(held.status)
        left = size - held.position
        unrecorded = f", then {left} bytes its crash left that no log accounts for" if left else ""
        harm = (
            "replacing the file (mode write) would destroy those rows and leave it unable to resume"
            if replace
            else "rows appended now would leave it unable to resume"
        )
        return (
            f"sink '{name}': {path} holds what run {run} made durable ({held.position} bytes){unrecorded}; that run "
            f"{state} and is not completed, and {harm}. Resume it first "
            f"(`elspeth resume {run}`), or, if it is not to go on, end it (`elspeth abandon {run} --reason TEXT`) or move "
            "the file aside (its rows go with it), and run again. Nothing was recorded"
        )

    def _refuse_to_start_anew(self, name: str, path: Path) -> None:
        for old, location in self.fold.sink_locations.items():
            durable = self.fold.sink_positions.get(old, 0)
            if durable > 0 and _same_file(_resolved(location, self.fold.working_dir or "."), path):
                raise ResumeRefused(
                    f"run {self.run_id} cannot be resumed: sink '{name}' writes {path}, the file in which this run "
                    f"made {durable} bytes durable as sink '{old}'; a new sink starts its file anew, which would cut "
                    f"those rows off. Keep the sink's name '{old}', or give '{name}' another file"
                )

    def _give_first_rows(self) -> None:
        """Tell each sink that asks (`first_row`) how to read the first row the run made durable in
        it: a CSV file without a header or a schema continues in that row's columns. Read only if
        asked."""
        for name, sink in self.p.nodes.sinks.items():
            take, h = getattr(sink, "first_row", None), self.fold.sink_first_rows.get(name)
            if take is not None and h is not None:
                take(lambda name=name, h=h: self._first_row(name, h))

    def _first_row(self, sink: str, h: str) -> Any:
        try:
            return decode_row(
                load_payloads(self.recorder, self.run_id, {h}, what=f"the first row sink '{sink}' made durable")[h]
            )
        except CorruptLog as e:
            raise PluginError(f"sink '{sink}'", "its file has no header: its columns are the fields of the first row "
                                                f"the run made durable there, which cannot be read ({e})") from e  # fmt: skip

    def _open_sinks(self) -> None:
        for name in self.p.nodes.sinks:
            self.proc.reopen_sink(name)

    def _reenter(self) -> None:
        """Put every non-terminal token of the fold back where the log says it is."""
        live = self.fold.tokens
        if not live:
            return
        rows = load_payloads(self.recorder, self.run_id, {t.data_hash for t in live.values()})
        for token_id, t in live.items():
            data = rows[t.data_hash]
            w = Work(token_id, decode_row(data), t.data_hash, t.at, t.row_index, t.branch, t.fork_id, data)
            self.proc.resume_token(w, t.state, t.place, t.outcome, t.node, t.reason)
        for cid, c in self.fold.coalesces.items():
            if c.deadline is not None:
                self.proc.schedule(c.deadline, "coalesce", cid)
        for bid, b in self.fold.batches.items():
            if b.deadline is not None:
                self.proc.schedule(b.deadline, "batch", bid)
        # A batch whose plugin failed while flushing it failed the run with the batch still
        # flushing: no trigger fires for it again, so it is flushed here, or its rows would
        # stay buffered past the end of the source (ARCHITECTURE §8, 6). First, as in the run
        # that failed: its outputs go on before the tokens that were still on the stack.
        for bid in [bid for bid, b in self.fold.batches.items() if b.state == BatchState.FLUSHING]:
            self.proc.resume_flush(bid)
        self.proc.drain()

    def run(self) -> str:
        """Carry the run on until the source is exhausted and everything is resolved, or a stop
        is requested. Returns the run's status."""
        proc, fold, clock = self.proc, self.fold, self.clock
        try:
            if not fold.source_exhausted:
                since_commit = 0
                last_commit = clock.now()
                items = self.p.source.read(fold.source_records)
                schema = getattr(self.p.source, "schema", None)  # a third-party source may have none
                if isinstance(schema, Schema):  # the types fixed by the first valid row, from the log
                    items = type_locked(items, schema, lambda: fold.fixed_types)
                source = _guarded_source(items)
                for item in source:
                    if item is None:
                        due = proc.next_deadline()
                        clock.sleep_until(due if due is not None else clock.now() + 0.2)
                        proc.fire_due()
                    else:
                        proc.fire_due()
                        proc.process_record(item)
                        since_commit += 1
                    if self.stop.requested:
                        break
                    # A clock set back (the wall clock, stepped) counts as time up: else no
                    # durability point would come by time until it caught up again.
                    elapsed = clock.now() - last_commit
                    full = self.writer.pending_bytes >= COMMIT_BYTES
                    if since_commit >= self.commit_every or full or not 0 <= elapsed < COMMIT_SECONDS:
                        self.durability_point()
                        since_commit, last_commit = 0, clock.now()
                        if self.progress:
                            self.progress(fold)
            if self.stop.requested:
                self.durability_point()
                self._emit(self.run_id, ev.RunInterrupted(reason=self.stop.requested))
                self.writer.commit()
                return RunState.INTERRUPTED
            if fold.status == RunState.RUNNING:
                # Also after a resume of a run that had drained: resuming made it `running` again.
                self._emit(self.run_id, ev.SourceExhausted(records=fold.source_records))
            proc.fire_due()
            proc.end_of_source()
            self.durability_point()
            for name, sink in self.p.nodes.sinks.items():
                try:
                    sink.close()
                except Exception as e:
                    raise at_node(f"sink '{name}'", e) from e
            self._emit(self.run_id, ev.RunCompleted())
            self.writer.commit()
            return RunState.COMPLETED
        except PluginError as e:
            self._fail(str(e), e)
            raise RunFailedError(self.run_id, str(e)) from e

    def _fail(self, reason: str, cause: BaseException) -> None:
        """Record the run's failure. The sink that failed may fail again while flushing: that
        second error is noted on `cause` (and in the recorded reason), never dropped; the run's
        failure is recorded regardless. What was not made durable is redone by a resume (its
        tokens are still pending in the log)."""
        try:
            self.durability_point()
        except Exception as again:
            cause.add_note(f"and flushing before recording the failure failed too: {again}")
            reason = f"{reason} (and the flush before recording it failed: {again})"
        self._emit(self.run_id, ev.RunFailed(reason=reason))
        self.writer.commit()

    def close(self) -> None:
        sys.setswitchinterval(self._gil_slice)
        try:
            for sink in self.p.nodes.sinks.values():
                sink.release()
        finally:
            self.writer.close()  # the run's lock and the sender go whatever a sink did


def _carry_on(ex: Execution) -> str:
    """`ex.run()`. When the store or the witness file fails in the middle (a lost connection, a
    full disk, the sender killed), the run is there to be resumed: the error says which run."""
    try:
        return ex.run()
    except CorruptLog:
        raise  # (the fold refusing what the engine made: not the store's failure, and no resume mends it)
    except LandscapeError as e:
        raise RunStopped(ex.run_id, str(e)) from e


def _guarded_source(items: Iterator[SourceItem | None]) -> Iterator[SourceItem | None]:
    """The source's records; anything it raises fails the run on record (see `at_node`)."""
    try:
        yield from items
    except Exception as e:
        raise at_node("source", e) from e


def _fingerprint(pipeline: Pipeline) -> str:
    try:
        return pipeline.source.fingerprint()
    except Exception as e:
        raise at_node("source", e) from e


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("elspeth")
    except Exception:
        return "0+unknown"


def _same_table(held: OpenPosition, sink: Any) -> bool:
    """Whether a run's sink location (`URL#table`, as the database sink spells it) is the table
    this database sink writes: a SQLite file compared as a file (its URL resolved in the folder
    that run ran in), a server's URL as written (its password redacted)."""
    from engine.plugins.db_urls import sqlite_file

    url, _, table = held.location.rpartition("#")
    mine = sink.location().rpartition("#")[0]
    ours, theirs = sqlite_file(sink.url), sqlite_file(url)
    if ours is not None or theirs is not None:
        return (
            ours is not None and theirs is not None and table.lower() == sink.table_name.lower()
            and _same_file(_resolved(str(theirs), held.working_dir), ours)
        )  # fmt: skip
    if table != sink.table_name:
        return False
    from landscape.urls import database_name

    theirs_db, ours_db = database_name(url), database_name(sink.url)
    if theirs_db is None or ours_db is None:  # (not read: by their words, as written)
        return bool(url == mine)
    return theirs_db.same_as(ours_db)  # another spelling of one server (localhost, 127.0.0.1) is one


def _resolved(location: str, working_dir: str) -> Path | None:
    try:
        return (Path(working_dir) / location).resolve()
    except (OSError, RuntimeError):
        return None


def _run_in(flushes: list[tuple[str, str, str]], path: Path) -> str | None:
    """The first run among `flushes` (as `PostgresRecorder.flushed_since` answers) that flushed to
    the file at `path`."""
    return next((r for r, loc, wd in flushes if _same_file(_resolved(loc, wd), path)), None)


def changed_keys(was: Any, now: Any, at: str = "") -> list[str]:
    """The key paths (`sinks.out.options.path`, `transforms[1]`) at which two settings, as a run
    records them (redacted), differ: the deepest where both still hold a mapping or a list of one
    length, in the order of `now` (keys gone from it after)."""
    if isinstance(was, dict) and isinstance(now, dict):
        keys = [*now, *(k for k in was if k not in now)]
        return [p for k in keys for p in changed_keys(was.get(k), now.get(k), f"{at}.{k}" if at else str(k))]
    if isinstance(was, list) and isinstance(now, list) and len(was) == len(now):
        return [p for i, (a, b) in enumerate(zip(was, now, strict=True)) for p in changed_keys(a, b, f"{at}[{i}]")]
    return [] if was == now else [at or "(the whole file)"]


def _kept_nothing(path: Path) -> bool:
    """Whether `path` is there and is not a regular file (a FIFO, a device: no rows stay in it)."""
    try:
        return not stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _regular_file_size(path: Path) -> int | None:
    """The size of the regular file at `path` (through links); None when there is none there,
    or a FIFO or a device, which keep no rows."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


# The bytes a resume cut from a sink file that are held to what it writes there instead: the
# start of them (a crash's leftovers are at most the rows after a durable flush).
_CUT_KEPT = 1 << 20


def _an_array_end(sink: Sink, cut: bytes) -> bool:
    """Whether the bytes a resume cuts from a JSON array sink's file are no more than an array's
    closing ']' (and blanks): the end of the array a run appending to it continues, where its first
    rows go, which a crash before them left in place; or the end a crash wrote as it closed. The
    resume writes its own: nothing of anyone's is lost, whatever it writes there instead."""
    if getattr(sink, "format", None) != "json":
        return False
    try:
        return cut.decode(str(getattr(sink, "encoding", "utf-8"))).strip() == "]"
    except (UnicodeError, LookupError):
        return False


def _bytes_at(path: Path, offset: int, n: int) -> bytes:
    """At most `n` bytes of the regular file at `path` from `offset`; none when it cannot be read,
    or is not a regular file (opened without waiting: a FIFO put in its place is never read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return b""
    with os.fdopen(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return b""
            f.seek(offset)
            return f.read(n)
        except OSError:
            return b""


def _digests_at(path: Path, positions: list[int]) -> dict[int, str]:
    """Hex sha256 of the file's first n bytes, for each n of `positions`, from one reading of it:
    several runs that crashed appending to one file would each have it read whole otherwise.
    Empty when it cannot be read (the sink says why when it opens the file)."""
    h = hashlib.sha256()
    digests = {0: h.hexdigest()} if 0 in positions else {}
    wanted = sorted({n for n in positions if n > 0})
    if not wanted:
        return digests  # nothing to read: the file is not even opened
    done = 0
    try:
        with path.open("rb") as f:
            for n in wanted:
                while done < n and (chunk := f.read(min(n - done, 1 << 20))):
                    h.update(chunk)
                    done += len(chunk)
                if done < n:
                    break  # the file is shorter now
                digests[n] = h.hexdigest()
    except OSError:
        return {}
    return digests


def _places(path: Path) -> list[str]:
    """The names a sink's file is held by (`Execution._hold_sink_files`), as digests (a path need
    not be text the store takes): this machine (its kernel's boot id: one store may serve many
    machines, whose paths and inode numbers repeat), and the folder by its device and inode with
    the file's name (the nearest folder there, and the rest of the path: a file and its folder may
    not exist yet); and the file by its device and inode when it is there."""
    machine = _machine()
    places: list[bytes] = []
    folder, rest = path.absolute().parent, [os.fsencode(path.name)]
    while True:
        try:
            st = folder.stat()
            break
        except OSError:
            if folder.parent == folder:
                st = None
                break
            rest.insert(0, os.fsencode(folder.name))
            folder = folder.parent
    if st is not None:
        places.append(b"in %d %d %s" % (st.st_dev, st.st_ino, b"/".join(rest)))
    try:
        st = path.stat()
        places.append(b"file %d %d" % (st.st_dev, st.st_ino))
    except OSError:
        pass
    return [hashlib.sha256(machine + b" " + p).hexdigest() for p in places]


def _table_places(sink: Any) -> list[str]:
    """The names a database sink's table is held by: in a SQLite file, the file's (`_places`)
    with the table's name as SQLite compares names; on a server, each place it may be reached at
    (`landscape.urls.database_name`: however the URL spells the host, user or options) with the
    database and table names, one on this machine (a socket, loopback) with the machine's id:
    a socket and a loopback address on one port are one place, as `DatabaseName.same_as` takes
    them (keyed apart, a run replacing a table reached by `localhost` did not hold it against
    one appending through the socket: a review)."""
    from engine.plugins.db_catalog import sqlite_folded
    from engine.plugins.db_urls import sqlite_file
    from landscape.urls import database_name

    file = sqlite_file(sink.url)
    table = str(sink.table_name)
    if file is not None:
        names = [f"table {p} {sqlite_folded(table)}" for p in _places(file)]
    elif (db := database_name(sink.url)) is not None:
        machine = _machine().decode("ascii", "replace")
        names = [
            f"table {machine + ' local' if e.unix or e.place == 'loopback' else e.place} {e.port} {db.dbname!r} {table!r}"
            for e in db.endpoints
        ]
    else:  # (not read: by its words, as written)
        names = [f"table {sink.location()}"]
    return [hashlib.sha256(n.encode("utf-8", "surrogateescape")).hexdigest() for n in names]


@functools.cache
def _machine() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname().encode()


def _same_place(a: Path | None, b: Path) -> bool:
    """Whether two paths name one file (`_same_file`), or, where there is no file yet, one path
    once resolved (links in the folders followed)."""
    if _same_file(a, b):
        return True
    try:
        return a is not None and not b.exists() and a == b.resolve()
    except (OSError, RuntimeError):
        return False


def _same_file(a: Path | None, b: Path) -> bool:
    """Whether two paths name one file: by device and inode, so a symbolic or hard link and
    another spelling of the path count too (False when either is not there)."""
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _notary(recorder: PostgresRecorder, pipeline: Pipeline, home: str | None) -> Notary:
    ls = pipeline.loaded.settings.landscape
    base = pipeline.loaded.path.parent
    return signing.notary(recorder, home, key=ls.signing_key, witness=ls.witness_dir, base=base)


def changed_since_read(db: Database, run_id: str, fold: RunFold, next_seq: int) -> str | None:
    """Why a stopped run's log, read and folded before its lock was taken, must not be written on
    now that it is held (`next_seq`: the writer's), or None."""
    if fold.last_seq < 0 and next_seq > 0:
        return f"a run with id {run_id} is already in this audit store; nothing was done (run again for a new id)"
    if next_seq != fold.last_seq + 1:
        # Another process wrote to the run between our reading its log and taking its lock
        # (two resumes at once): what we folded is stale, and acting on it would be wrong.
        return (
            f"run {run_id} was continued by another process while this one read its log "
            f"(log now at seq {next_seq - 1}, read up to {fold.last_seq}); nothing was done — "
            f"see `elspeth show {run_id}` for what it recorded"
        )
    # The projections are written in the transactions that write the events: now that no other
    # process can write the run, ending elsewhere than the log read, they were changed without
    # it, and the first commit would fail on them (a key there already), a resume's after the
    # sinks were cut back. A quick check, not `replay --check`'s.
    at = metrics_at(db, run_id)
    if at is None or at.last_seq != fold.last_seq:
        return (
            f"run {run_id}: its projection tables reflect its log up to seq "
            f"{None if at is None else at.last_seq}, but the log ends at seq {fold.last_seq}: they were "
            f"changed without the log; see `elspeth replay {run_id} --check` and `elspeth projections "
            f"rebuild {run_id}`; nothing was done"
        )
    return None


def fold_run(
    db: Database,
    run_id: str,
    *,
    strict: bool = False,
    upto_seq: int | None = None,
    checkpoints: Sequence[Witnessed] = (),
    verifier: Verifier | None = None,
) -> RunFold:
    """The run's state from its log, verified on the way (chain, seq continuity, legal
    transitions, and the signed `checkpoints` given: a log cut short is caught): a tampered log
    is refused, not continued. `strict` keeps the ended tokens (replay, tests); a run that goes
    on drops them so memory stays flat."""
    verified = _verified_log(db, run_id, upto_seq=upto_seq, checkpoints=checkpoints, verifier=verifier)
    if not strict:
        verified.fold.ended = None
    return verified.fold


def _verified_log(
    db: Database,
    run_id: str,
    *,
    upto_seq: int | None = None,
    checkpoints: Sequence[Witnessed] = (),
    verifier: Verifier | None = None,
) -> Verification:
    """`fold_run`'s reading of the log, with all it verified (the fold, the head, the tree)."""
    recorder = PostgresRecorder(db)
    sizes = [cp.size for cp in checkpoints]
    verified, _ = verify_log(recorder, run_id, upto_seq=upto_seq, roots_at=sizes, references=False)
    if verified.bad is None and checkpoints:
        origin = run_origin(recorder.store_id(), run_id)
        verified.bad = verify_checkpoints(verified, checkpoints, verifier, origin)
        if verified.bad is None and upto_seq is None:  # (a resume: it would continue after them)
            verified.bad = unsigned_end(recorder, run_id, verified, checkpoints, verifier, origin)
    if verified.bad is not None:  # no events at all is an empty fold: a run that never committed
        verified.raise_if_bad()
    return verified


def start_run(
    db: Database,
    pipeline: Pipeline,
    *,
    clock: Clock | None = None,
    commit_every: int = DEFAULT_COMMIT_EVERY,
    progress: ProgressFn | None = None,
    run_id: str | None = None,
    home: str | None = None,
    sending: Sending = "thread",
) -> Outcome:
    """Run a pipeline. `sending`: where the writer sends its commits from (`Sending`); the
    command line sends them from a child process, in-process callers from a thread."""
    clock = clock or SystemClock()
    run_id = run_id or new_run_id(clock)
    fold = RunFold(run_id)
    with Stop(run_id).installed() as stop:
        ex = Execution(
            db, pipeline, run_id, fold, clock=clock, commit_every=commit_every, progress=progress, stop=stop,
            home=home, sending=sending,
        )  # fmt: skip
        try:
            ex.start(resumed=False, forced=False, fingerprint=_fingerprint(pipeline))
            status = _carry_on(ex)
            stop.settled()
        finally:
            ex.close()
    return Outcome(run_id, status, fold)


def resume_run(
    db: Database,
    run_id: str,
    load: Callable[[Path], Pipeline],
    *,
    force: bool = False,
    clock: Clock | None = None,
    commit_every: int | None = None,
    progress: ProgressFn | None = None,
    settings_path: Path | None = None,
    home: str | None = None,
    sending: Sending = "thread",
) -> Outcome:
    recorder = PostgresRecorder(db)
    if not recorder.run_exists(run_id):
        raise ResumeRefused(f"no run {one_line(run_id)} in {db.describe()} (see `elspeth runs`; another --home?)")
    holder = recorder.lock_holder(run_id)
    if holder is not None:
        raise ResumeRefused(f"run {run_id} is {holding(holder)}; not resuming it, nothing was done")
    # The projection is committed with the events it derives from: a quick answer for the
    # common mistake, before folding a log of perhaps millions of events, said as the store's
    # word (the writer role can change the table, or append an unsigned ending). The fold
    # decides for every other case.
    summary = run_summary(db, run_id)
    if summary is not None and summary.status in RUN_FINAL:
        raise ResumeRefused(
            f"{_final(run_id, summary.status)} (as the audit store says: `elspeth replay {run_id} --check` verifies it)"
        )
    # The settings are loaded before the log is verified, for the key and the witness folder they
    # name (the run's checkpoints were signed and witnessed with those). Which file, and where
    # relative paths resolve, are read from the run's first event and its projection row here,
    # and checked against the verified log below.
    created = recorder.run_created(run_id)
    folder = recorder.working_dir(run_id) if created is not None else None  # its last, if a resume moved it
    if folder is not None and os.path.isdir(folder):
        os.chdir(folder)
    elif folder is not None and settings_path is None:
        raise ResumeRefused(
            f"run {run_id} ran in {folder}, which no longer exists: its settings' relative paths "
            "cannot resolve as they did; give the settings with -s FILE to resume from here"
        )
    recorded = summary.settings_path if summary is not None else created.settings_path if created else None
    if settings_path is None and recorded is None:
        raise ResumeRefused(f"run {run_id} has no recorded settings file; see `elspeth replay {run_id} --check`")
    if settings_path is None and not os.path.lexists(str(recorded)):  # (said from the folder it ran in)
        raise ResumeRefused(
            f"run {run_id}: its settings file {recorded} is not there (the run ran in {os.getcwd()}): moved or "
            f"deleted? Give it with `elspeth resume {run_id} -s FILE` (--force too if its text changed), or end the "
            f"run with `elspeth abandon {run_id} --reason TEXT`"
        )
    pipeline = load(settings_path or Path(str(recorded)))
    try:
        return _resume(db, recorder, run_id, pipeline, created, force, clock, commit_every, progress, settings_path,
                       home, sending)  # fmt: skip
    finally:
        pipeline.close()


def _signers(note: str) -> list[str]:
    try:
        return [s.label for s in parse_note(note).signatures]
    except NoteError:  # the verification says what is wrong with it
        return []


def _final(run_id: str, status: str) -> str:
    if status == RunState.ABANDONED:
        return f"run {run_id} was abandoned (`elspeth show {run_id}` says why); it cannot be resumed"
    return f"run {run_id} is already completed; there is nothing to resume"


def verified_to_write_on(
    db: Database,
    recorder: PostgresRecorder,
    run_id: str,
    created: ev.RunCreated | None,
    signing_key: str | None,
    witness_dir: str | None,
    base: Path,
    home: str | None,
    doing: str,
) -> Verification:
    """A stopped run's log, verified before a process writes on to it (`doing`: "resumed",
    "abandoned"): against every checkpoint the run signed, from the store and from its witness
    file (where the run's first settings put it, and where these do: `witness_dir`, relative to
    `base`), checked with the key these settings sign with (`signing_key`). A log cut short after
    a checkpoint must not be written on: a resume would write its rows again. ResumeRefused."""
    folders = signing.run_witness_folders(home, created, witness_dir, base)
    checkpoints = [
        *recorder.checkpoints(run_id),
        *(cp for folder in folders for cp in read_run_witness(folder, run_id)),
    ]
    if not checkpoints:
        # Every commit signs one, in the same transaction: a log with none had them deleted, and
        # a tail cut off with them could not be told apart from the log's end. Resumed, the run
        # would sign over what is left, and every later check would pass (as `replay` refuses).
        where = " or ".join(str(witness_path(folder, run_id)) for folder in folders)
        raise ResumeRefused(
            f"run {run_id} has no signed checkpoint, in the store or in {where}: a cut-off tail could not be told "
            f"apart from the end of the log, so it is not {doing} (if its witness folder was named by "
            f"ELSPETH_WITNESS_DIR, set it again); see `elspeth replay {run_id}`"
        )
    key = signing.verifier(home, key=signing_key, base=base)
    signers = sorted({label for cp in checkpoints for label in _signers(cp.note)})
    if key is not None and signers and key.label not in signers:
        # Not a log that fails to verify: the key at hand is not the run's (its settings file moved
        # or changed, a home or an ELSPETH_SIGNING_KEY of another run). Said as such.
        raise ResumeRefused(
            f"run {run_id} cannot be {doing} with the key {key.label}: its checkpoints are signed by "
            f"{', '.join(signers)}; name that key (the run's settings file with -s FILE, whose landscape.signing_key "
            "names it, or ELSPETH_SIGNING_KEY), or use the home that ran it; nothing was done"
        )
    if key is None:
        # No key named and none in this home: the signatures could not be checked, and the run
        # would go on signing with a key made now, so that no export of it would ever verify
        # (an export names one key). The key that signed it must sign the rest.
        raise ResumeRefused(
            f"run {run_id} cannot be {doing} here: its checkpoints are signed by {', '.join(signers) or 'no key'}, "
            f"and no signing key is named (landscape.signing_key, ELSPETH_SIGNING_KEY) nor in {home or 'the home'}; "
            "name the key that signed it, or use the home that ran it (--home, ELSPETH_HOME: ./.elspeth is the "
            "working folder's); a new key would sign the rest, and no export of the run would verify"
        )
    try:
        return _verified_log(db, run_id, checkpoints=checkpoints, verifier=key)
    except CorruptLog as e:
        raise ResumeRefused(
            f"run {run_id} cannot be {doing}: its log does not verify ({e}); see `elspeth replay {run_id} --check`"
        ) from e


def _resume(
    db: Database,
    recorder: PostgresRecorder,
    run_id: str,
    pipeline: Pipeline,
    created: ev.RunCreated | None,
    force: bool,
    clock: Clock | None,
    commit_every: int | None,
    progress: ProgressFn | None,
    settings_path: Path | None,
    home: str | None,
    sending: Sending,
) -> Outcome:
    ls = pipeline.loaded.settings.landscape
    verified = verified_to_write_on(db, recorder, run_id, created, ls.signing_key, ls.witness_dir,
                                    pipeline.loaded.path.absolute().parent, home, "resumed")  # fmt: skip
    fold = verified.fold
    fold.ended = None  # the run goes on: memory stays flat (see `fold_run`)
    records_before = fold.source_records
    # The folder resume_run went into was the store's word, read before the log was verified.
    if os.path.isdir(fold.working_dir) and os.getcwd() != os.path.realpath(fold.working_dir):
        raise ResumeRefused(
            f"run {run_id}: the folder the store named before its log was verified ({os.getcwd()}) is not the one "
            f"the verified log names ({fold.working_dir}); see `elspeth replay {run_id} --check`"
        )
    if fold.status in RUN_FINAL:
        raise ResumeRefused(_final(run_id, fold.status))
    if settings_path is None and pipeline.loaded.path != Path(fold.settings_path):
        raise ResumeRefused(
            f"run {run_id}: the settings file read ({pipeline.loaded.path}) is not the one its log names last "
            f"({fold.settings_path}); see `elspeth replay {run_id} --check`, or resume with -s FILE"
        )
    changed_settings = fold.settings_hash not in (pipeline.loaded.text_hash, pipeline.loaded.legacy_hash)
    if changed_settings and not force:
        keys = changed_keys(fold.settings, pipeline.loaded.redacted)
        # A value the file takes from the environment changes with it, the file untouched: named,
        # as what to compare (the run's environment is not recorded, so not as the cause).
        names = sorted({v for k in keys for v in pipeline.loaded.from_env.get(k, [])})
        by_env = f"; the file takes some of these from environment variables: {', '.join(names)}" if names else ""
        what = (
            f"changed: {', '.join(keys[:5])}{f' and {len(keys) - 5} more' if len(keys) > 5 else ''}{by_env}"
            if keys
            else f"no key reads differently, yet they hash differently: see `elspeth replay {run_id} --check`"
        )
        raise ResumeRefused(
            f"the settings of run {run_id} changed since it started ({pipeline.loaded.path}; {what}); "
            "resume with --force to continue with the new settings"
        )
    # Checked whatever the settings: a token put back where these settings have no place would
    # never end, yet the run would complete (ARCHITECTURE §8, 1). Before anything is written.
    gone = places_gone(fold, pipeline.nodes, pipeline.decls)
    if gone:
        raise ResumeRefused(
            f"run {run_id} cannot be resumed with {pipeline.loaded.path}: the run still has rows in what these "
            f"settings no longer have: {'; '.join(gone)}. Allowed: settings that keep each of these under its "
            "name, a sink with its plugin (options may change, but for its layout), as the run's own did; nothing was done"
        )
    relaid = layouts_changed(fold, pipeline.nodes.sinks, pipeline.loaded.redacted)
    if relaid:
        raise ResumeRefused(
            f"run {run_id} cannot be resumed with {pipeline.loaded.path}: the rest of the output would be written "
            f"in another layout than the bytes the run made durable, leaving a file that is neither: "
            f"{'; '.join(relaid)}. Allowed: those options as the run wrote with (others may change: the path of a "
            "moved file, a database URL's password); nothing was done"
        )
    # Another file (same text, or changed with --force) is recorded, so later resumes use it.
    other_file = settings_path is not None and settings_path.resolve() != Path(fold.settings_path).resolve()
    fingerprint = _fingerprint(pipeline)
    changed = fingerprint != fold.source_fingerprint
    if changed and not force:
        raise ResumeRefused(
            f"the input of run {run_id} changed since it started (source fingerprint differs); resume with --force "
            f"to continue anyway: the changed input is then read from its record {fold.source_records + 1} on, its "
            f"first {fold.source_records} not (the run read those records before; that is recorded)"
        )
    with Stop(run_id).installed() as stop:
        ex = Execution(
            db,
            pipeline,
            run_id,
            fold,
            clock=clock or SystemClock(),
            commit_every=commit_every or pipeline.loaded.settings.checkpoint.commit_every_rows(),
            progress=progress,
            stop=stop,
            home=home,
            verified=(verified.tree, verified.head),
            sending=sending,
        )
        try:
            try:
                ex.start(resumed=True, forced=force and changed, fingerprint=fingerprint,
                         new_settings=changed_settings or other_file)  # fmt: skip
                status = _carry_on(ex)
                stop.settled()
            finally:
                ex.close()
        except RunFailedError as e:
            # Bytes cut and written over already are gone whatever comes next: the next resume
            # starts after them, and knows nothing of them.
            e.notes = tuple(ex.cut_and_lost(ended=False))
            raise
    notes = tuple(ex.cut_and_lost(ended=status == RunState.COMPLETED))
    return Outcome(run_id, status, fold, records_before, input_changed=force and changed, notes=notes)
