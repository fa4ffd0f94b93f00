"""The one door to the audit store (issue 9): no SQL or driver outside the landscape, imports
that point one way, a verifier that needs no database, and cross-run reading that never skips a
late commit."""

from __future__ import annotations

import ast
import hashlib
import re
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from msgspec.structs import replace

from landscape.canonical import commitment
from landscape.chain import GENESIS, event_hash
from landscape.db import Database
from landscape.postgres import _SINCE, _SINCE_PLAN, PostgresRecorder
from landscape.records import GlobalEvent, Payload, StoredEvent
from landscape.roles import Role
from landscape.verify import verify_events, verify_payloads
from statecharts import events as ev
from statecharts.compiled import EVENT_MACHINE
from statecharts.events import encode_event

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("statecharts", "landscape", "engine")
# The database sink writes users' own databases: the one place outside the landscape with SQL
# (the sink, and its modules that read the catalog, its columns' types and the file it opened).
SQL_ALLOWED = {"engine/plugins/database_sink.py", "engine/plugins/db_catalog.py", "engine/plugins/db_columns.py",
               "engine/plugins/db_urls.py"}  # fmt: skip
# The PostgreSQL implementation: connections and error translation (db), the recorder (postgres,
# and its writer's transactions: commits, sent from a thread or a child process: sender_process),
# the server's roles and grants (roles) and the embedded server itself (embedded).
DRIVER_ALLOWED = {"landscape/db.py", "landscape/postgres.py", "landscape/commits.py", "landscape/sender_process.py",
                  "landscape/roles.py", "landscape/embedded.py", *SQL_ALLOWED}  # fmt: skip
_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|TRUNCATE|CREATE|DROP|ALTER|COPY)\s+\S", re.ASCII)


def _sources(*packages: str) -> Iterator[tuple[str, ast.Module]]:
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            yield rel, ast.parse(path.read_text(), rel)


def _imports(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_no_sql_text_and_no_execute_in_the_engine() -> None:
    found = []
    for rel, tree in _sources("engine"):
        if rel in SQL_ALLOWED:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.search(node.value):
                found.append(f"{rel}:{node.lineno}: SQL text {node.value[:40]!r}")
            if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany", "cursor", "copy"):
                found.append(f"{rel}:{node.lineno}: .{node.attr}(")
    assert found == []


def test_only_the_postgresql_implementation_imports_the_driver() -> None:
    found = [
        f"{rel}: imports {name}"
        for rel, tree in _sources(*PACKAGES)
        if rel not in DRIVER_ALLOWED
        for name in _imports(tree)
        if name.split(".")[0] in ("psycopg", "psycopg2", "asyncpg")
    ]
    assert found == []


def test_the_checks_above_can_fail() -> None:
    """The scanners see what they look for (so an empty list above means something)."""
    tree = ast.parse("import psycopg\nconn.execute('SELECT 1 FROM events')\n")
    assert list(_imports(tree)) == ["psycopg"]
    assert any(isinstance(n, ast.Constant) and _SQL.search(str(n.value)) for n in ast.walk(tree))


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for rel, tree in _sources(*PACKAGES):
        module = rel[:-3].replace("/", ".").removesuffix(".__init__")
        graph[module] = {name for name in _imports(tree) if name.split(".")[0] in PACKAGES}
    return graph


def test_imports_point_engine_to_landscape_to_statecharts_only() -> None:
    rank = {"statecharts": 0, "landscape": 1, "engine": 2}
    wrong = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if rank[target.split(".")[0]] > rank[module.split(".")[0]]
    ]
    assert wrong == []


def test_no_import_cycle_inside_the_landscape() -> None:
    graph = {
        m: {t for t in ts if t.startswith("landscape.")} for m, ts in _graph().items() if m.startswith("landscape")
    }
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, module, target]))
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_verifier_imports_where_no_driver_is_installed(tmp_path: Path) -> None:
    """An environment with every installed package except psycopg (links to the rest)."""
    site = Path(sysconfig.get_paths()["purelib"])
    bare = tmp_path / "site"
    bare.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith(("psycopg", "_psycopg", "__editable__", "elspeth")):
            (bare / entry.name).symlink_to(entry)
    code = (
        "import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]; "
        f"sys.path[:0] = [{str(ROOT)!r}, {str(bare)!r}]\n"
        "try:\n    import psycopg\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('psycopg importable')\n"
        "import landscape.verify, landscape.records, landscape.fold\n"
        "import landscape.merkle, landscape.note, landscape.checkpoint, landscape.keys\n"
        "assert not any(m.startswith('psycopg') for m in sys.modules), 'the verifier pulled in the driver'\n"
        "print('ok')"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


# -- the pure verifier ---------------------------------------------------------------------------


def _log(run_id: str = "run-v", rows: int = 3) -> tuple[list[StoredEvent], dict[str, Payload]]:
    """A small legal run, hash-chained as the writer does it, and its row payloads."""
    payloads: dict[str, Payload] = {}
    events: list[tuple[str, ev.EventBase]] = [
        (run_id, ev.RunCreated(settings_path="s", settings_hash="h", settings={}, source_fingerprint="f",
                               nodes=[], elspeth_version="t", working_dir=".")),
        (run_id, ev.RunStarted()),
    ]  # fmt: skip
    for i in range(rows):
        data = f'{{"id":{i}}}'.encode()
        salt = bytes([i]) * 16
        h = commitment(salt, data)
        payloads[h] = Payload(salt, data)
        events += [
            (f"r{i}", ev.TokenCreated(row_index=i, data_hash=h, at="out")),
            (f"r{i}", ev.SinkAssigned(sink="out", outcome="completed")),
        ]
    events += [(run_id, ev.SinkFlushed(sink="out", position=rows, rows=rows, location="x"))]
    events += [(f"r{i}", ev.TokenCompleted(sink="out")) for i in range(rows)]
    events += [(run_id, ev.SourceExhausted(records=rows)), (run_id, ev.RunCompleted())]
    stored, prev = [], GENESIS
    for seq, (entity, event) in enumerate(events):
        stored.append(_stored(run_id, seq, entity, event, prev))
        prev = stored[-1].hash
    return stored, payloads


def _stored(run_id: str, seq: int, entity: str, event: ev.EventBase, prev: bytes, at_us: int = 1000) -> StoredEvent:
    body = encode_event(event)
    kind = type(event).__name__
    machine = EVENT_MACHINE[kind]
    ph = hashlib.sha256(body).digest()
    h = event_hash(prev, run_id, seq, machine, entity, kind, 1, at_us + seq, ph)
    return StoredEvent(run_id, seq, machine, entity, kind, 1, at_us + seq, body, ph, prev, h)


def _rechain(events: list[StoredEvent]) -> list[StoredEvent]:
    """What a forger who recomputes every hash produces (seqs renumbered from 0)."""
    out, prev = [], GENESIS
    for seq, e in enumerate(events):
        out.append(_stored(e.run_id, seq, e.entity_id, e.event, prev))
        prev = out[-1].hash
    return out


@pytest.mark.parametrize("batch", [1, 2, 3, 1000])
def test_the_verified_tree_is_the_same_however_its_leaves_are_batched(
    batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from landscape import verify
    from landscape.merkle import leaf_hash, root

    monkeypatch.setattr(verify, "_LEAF_BATCH", batch)
    log, _ = _log()
    sizes = [1, 4, len(log)]
    result = verify_events("run-v", log, roots_at=sizes)
    leaves = [leaf_hash(e.hash) for e in log]
    assert result.root == root(leaves) and result.tree.size == len(log)
    assert result.roots == {n: root(leaves[:n]) for n in sizes}


def test_a_clean_log_verifies_and_folds() -> None:
    log, payloads = _log()
    result = verify_events("run-v", log)
    assert result.ok and result.events == len(log) and result.head == log[-1].hash
    assert result.fold.status == "completed" and result.fold.outcomes["completed"] == 3
    assert verify_payloads(result.referenced, payloads) is None


@pytest.mark.parametrize(
    ("mutate", "seq", "why"),
    [
        (lambda log: log[:3] + log[4:], 3, "seq 3 is missing"),
        (lambda log: [*log[:4], log[3], *log[4:]], 3, "appears again"),
        (lambda log: [log[0], log[2], log[1], *log[3:]], 1, "missing"),
        (
            lambda log: [log[0], log[1], replace(log[2], payload=b'{"type":"TokenCreated"}'), *log[3:]],
            2,
            "payload hash",
        ),
        (lambda log: _rechain([*log[:2], *log[3:]]), 2, "not a legal transition"),  # re-signed, a token dropped
        (lambda log: _rechain([*log[:-2], log[-1]]), len(_log()[0]) - 2, "not a legal transition"),
        (lambda log: [*log[:5], replace(log[5], run_id="run-x"), *log[6:]], 5, "run-x"),
    ],
)
def test_the_first_bad_record_is_named(mutate: object, seq: int, why: str) -> None:
    log, _ = _log()
    result = verify_events("run-v", mutate(log))  # type: ignore[operator]
    assert not result.ok and result.bad is not None
    assert (result.bad.seq, why in result.bad.why) == (seq, True), result.bad


def test_a_missing_or_altered_payload_is_named_unless_an_erasure_explains_it() -> None:
    log, payloads = _log()
    referenced = verify_events("run-v", log).referenced
    first = next(iter(payloads))
    missing = {h: d for h, d in payloads.items() if h != first}
    assert verify_payloads(referenced, missing) is not None
    assert "missing" in verify_payloads(referenced, missing).why  # type: ignore[union-attr]
    assert verify_payloads(referenced, missing, explained={first: "erased"}) is None
    altered = {**payloads, first: payloads[first]._replace(data=b'{"id":99}')}
    assert "altered" in verify_payloads(referenced, altered).why  # type: ignore[union-attr]


# -- reading across runs -------------------------------------------------------------------------


def _insert(conn: object, run_id: str, seqs: range) -> None:
    """Append events `seqs` of the run in the connection's transaction, as a writer's commit does:
    the events, and the commit's row in `event_commits`."""
    for seq in seqs:
        conn.execute(  # type: ignore[attr-defined]
            "INSERT INTO events (run_id, seq, machine, entity_id, event_type, schema_version, recorded_at, "
            "payload, payload_hash, prev_hash, hash) VALUES (%s, %s, 'run', %s, 'RunStarted', 1, now(), "
            "'\\x7b7d', '\\x00', '\\x00', '\\x00')",
            (run_id, seq, run_id),
        )
    conn.execute(  # type: ignore[attr-defined]
        "INSERT INTO event_commits (run_id, first_seq, last_seq) VALUES (%s, %s, %s)", (run_id, seqs[0], seqs[-1])
    )


def _once_final(recorder: PostgresRecorder, position: tuple[int, int]) -> list[GlobalEvent]:
    """`read_since` until it returns events: a transaction open elsewhere on the server (an
    autovacuum's, another database's) holds back every commit after it from all readers until it
    ends, which takes milliseconds; a minute of nothing is a failure."""
    deadline = time.monotonic() + 60
    while not (page := recorder.read_since(position)) and time.monotonic() < deadline:
        pass
    return page


def test_read_since_never_skips_a_transaction_that_took_its_positions_early_and_committed_late(db: Database) -> None:
    recorder = PostgresRecorder(db)
    start = max((g.position for g in recorder.read_since((0, 0), limit=1_000_000)), default=(0, 0))
    with db.connect() as early_xid, db.connect() as late_xid:
        # `early_xid` gets the older transaction id but writes (takes identity positions) last.
        early_xid.execute("SELECT pg_current_xact_id()")
        late_xid.execute("SELECT pg_current_xact_id()")
        _insert(late_xid, "run-late", range(3))  # positions first, commits last
        _insert(early_xid, "run-early", range(3))
        early_xid.commit()
        # Only run-early is final (older than every open transaction). A reader going by
        # position alone would now stand past run-late's positions and skip them for good.
        first = _once_final(recorder, start)
        assert [(g.event.run_id, g.event.seq) for g in first] == [("run-early", s) for s in range(3)]
        late_xid.commit()
    later = _once_final(recorder, first[-1].position)
    assert [(g.event.run_id, g.event.seq) for g in later] == [("run-late", s) for s in range(3)]
    paged, position = [], start
    while page := recorder.read_since(position, limit=2):
        paged += page
        position = page[-1].position
    assert [g.event.run_id for g in paged] == ["run-early"] * 3 + ["run-late"] * 3


def test_read_since_pages_through_commits_of_every_size_each_event_once_in_order(db: Database) -> None:
    """Pages smaller, equal and larger than a commit: a page may stop inside a commit, continue in
    it, and take several commits; read whole, or a page at a time, the same events in order."""
    recorder = PostgresRecorder(db)
    start = max((g.position for g in recorder.read_since((0, 0), limit=1_000_000)), default=(0, 0))
    for run_id, sizes in (("run-pages-a", (5, 1, 3)), ("run-pages-b", (2, 7))):
        seq = 0
        for size in sizes:
            with db.connect() as conn:
                _insert(conn, run_id, range(seq, seq + size))
            seq += size
    with db.connect() as conn:
        expected = [
            ((tx, position), run_id, seq)
            for tx, position, run_id, seq in conn.execute(
                "SELECT tx_id, global_position, run_id, seq FROM events WHERE run_id LIKE 'run-pages-%' "
                "ORDER BY tx_id, global_position"
            )
        ]
    assert len(expected) == 18
    deadline = time.monotonic() + 60  # (until every one is final: see `_once_final`)
    while len(recorder.read_since(start, limit=100)) < len(expected) and time.monotonic() < deadline:
        pass
    for limit in (1, 2, 3, 5, 7, 18, 100):
        paged, position = [], start
        while page := recorder.read_since(position, limit=limit):
            assert len(page) <= limit
            paged += [(g.position, g.event.run_id, g.event.seq) for g in page]
            position = page[-1].position
        assert paged == expected, limit


def _reader_start(recorder: PostgresRecorder) -> tuple[int, int]:
    """Where a reader stands after every event the module's database holds so far."""
    return max((g.position for g in recorder.read_since((0, 0), limit=1_000_000)), default=(0, 0))


def _since_plan(db: Database, start: tuple[int, int], limit: int) -> str:
    """The plan `read_since` runs for a page of `limit` after `start`, run (EXPLAIN ANALYZE)."""
    with db.connect() as conn:
        for setting in _SINCE_PLAN:
            conn.execute(setting)
        rows = conn.execute(
            "EXPLAIN (ANALYZE, COSTS off, TIMING off, SUMMARY off) " + _SINCE,
            {"tx": start[0], "pos": start[1], "limit": limit},
        )
        return "\n".join(r[0] for r in rows)


def _paged(recorder: PostgresRecorder, start: tuple[int, int], limit: int) -> list[tuple[tuple[int, int], str, int]]:
    """Every event after `start`, read `limit` at a time as a reader goes: (position, run, seq)."""
    paged, position = [], start
    while page := recorder.read_since(position, limit=limit):
        assert len(page) <= limit
        paged += [(g.position, g.event.run_id, g.event.seq) for g in page]
        position = page[-1].position
    return paged


def _in_read_order(db: Database, runs: str) -> list[tuple[tuple[int, int], str, int]]:
    """The events of the runs named LIKE `runs`, in (tx_id, global_position) order, once each is
    final (see `_once_final`)."""
    with db.connect() as conn:
        stored = [
            ((tx, position), run_id, seq)
            for tx, position, run_id, seq in conn.execute(
                "SELECT tx_id, global_position, run_id, seq FROM events WHERE run_id LIKE %s "
                "ORDER BY tx_id, global_position",
                (runs,),
            )
        ]
    ours = {run_id for _, run_id, _ in stored}
    deadline = time.monotonic() + 60
    while stored and sum(
        r in ours for _, r, _ in _paged(PostgresRecorder(db), (stored[0][0][0] - 1, 0), 1_000_000)
    ) < len(stored):
        assert time.monotonic() < deadline
    return stored


def test_read_since_pages_through_a_transaction_that_wrote_two_runs_in_position_order(db: Database) -> None:
    """One transaction wrote run `zz-two` first (the lower positions), then `aa-two`: a page that
    ends inside the transaction must not pass over the other run's events (found by a hostile
    review: pages of one read `aa-two` only, its commit row first by run name)."""
    recorder = PostgresRecorder(db)
    start = _reader_start(recorder)
    with db.connect() as conn:
        _insert(conn, "zz-two", range(2))
        _insert(conn, "aa-two", range(2))
    expected = _in_read_order(db, "%-two")
    assert [r for _, r, _ in expected] == ["zz-two", "zz-two", "aa-two", "aa-two"]
    for limit in (1, 2, 3, 100):
        assert _paged(recorder, start, limit) == expected, limit


def test_read_since_goes_past_commit_rows_whose_events_are_not_there(db: Database) -> None:
    """A commit's row whose events are gone (its run's partition detached and archived, as
    docs/scaling.md says) or never were (one a writer inserted alone, claiming a billion events):
    the reader reads past them to the events after, at every page size. (A hostile review: each
    made every reader's page empty, that is, the reader stopped there for good.)"""
    recorder = PostgresRecorder(db)
    start = _reader_start(recorder)
    with db.connect() as conn:
        conn.execute("INSERT INTO event_commits (run_id, first_seq, last_seq) VALUES ('archived-gone', 0, 9999)")
    with db.connect(role=Role.WRITER) as conn:  # (a writer's row names its own transaction: see test_access)
        conn.execute("INSERT INTO event_commits (run_id, first_seq, last_seq) VALUES ('claims-all', 0, 10^15)")
        conn.execute("INSERT INTO event_commits (run_id, first_seq, last_seq) VALUES ('claims-less', 5, -10^15)")
    with db.connect() as conn:
        _insert(conn, "after-gone", range(3))
    expected = _in_read_order(db, "after-gone")
    assert len(expected) == 3
    for limit in (1, 2, 10, 10_000, 1_000_000):
        assert _paged(recorder, start, limit) == expected, limit


def test_read_since_reads_the_commits_in_order_and_stops_when_the_page_is_full(db: Database) -> None:
    """A reader's page costs what it reads, not what follows it: the commits are read in their
    key's order (never all sorted) and the reading stops once the page is full (a hostile review
    made each page read every commit row after the reader's position, at 40 s a page)."""
    recorder = PostgresRecorder(db)
    start = _reader_start(recorder)
    for i in range(20):
        with db.connect() as conn:
            _insert(conn, f"run-many-{i:02}", range(3))
    assert len(_in_read_order(db, "run-many-%")) == 60
    with db.connect() as conn:
        (before,) = conn.execute("SELECT count(*) FROM event_commits WHERE tx_id = %s", (start[0],)).fetchone() or (0,)
    plan = _since_plan(db, start, 3)
    assert not re.search(r"(?<!Incremental )Sort  ", plan), plan
    (commits,) = re.findall(r"Index Scan using event_commits_pkey on event_commits .*rows=(\d+)", plan)
    # the rest of the reader's transaction, the page's, and the first row of the next
    assert int(commits) <= before + 2, plan


def test_read_since_reads_nothing_of_a_younger_commit_while_an_older_transaction_is_open(db: Database) -> None:
    """The other order of the late commit: the older transaction id commits after the younger.
    A reader that took the younger commit's events now would stand past the older one's id, and
    skip its events for good once it commits; below the snapshot's xmin it waits for both. (The
    test above has the older id commit first: it passed with the xmin bound taken out.)"""
    recorder = PostgresRecorder(db)
    start = _reader_start(recorder)
    with db.connect() as older, db.connect() as younger:
        older.execute("SELECT pg_current_xact_id()")
        younger.execute("SELECT pg_current_xact_id()")
        _insert(older, "run-older", range(2))
        _insert(younger, "run-younger", range(2))
        younger.commit()
        assert recorder.read_since(start) == []
        older.commit()
    read = [(g.event.run_id, g.event.seq) for g in _once_final(recorder, start)]  # (both final at once)
    assert read == [("run-older", 0), ("run-older", 1), ("run-younger", 0), ("run-younger", 1)]


def test_read_since_reads_each_event_once_whatever_a_writers_commit_row_names(db: Database) -> None:
    """A writer's commit row names its own transaction (test_access) but any run and any range:
    one naming a run whose events another transaction wrote neither repeats them nor moves them
    to the writer's transaction. (Passed with the events' own tx_id left out of the match.)"""
    recorder = PostgresRecorder(db)
    start = _reader_start(recorder)
    with db.connect() as conn:
        _insert(conn, "run-named", range(3))
    with db.connect(role=Role.WRITER) as conn:
        conn.execute("INSERT INTO event_commits (run_id, first_seq, last_seq) VALUES ('run-named', 0, 10^15)")
    expected = _in_read_order(db, "run-named")
    assert len(expected) == 3
    for limit in (1, 2, 100):
        assert _paged(recorder, start, limit) == expected, limit


def test_read_since_reads_no_range_of_a_commit_row_whose_ends_are_not_its_own(db: Database) -> None:
    """A writer's row naming another run's events over any range (its own transaction's id, a
    range nobody checks): each page that reached it scanned that run's events one by one, as the
    events' tx_id is not in their key (a review: 50 such rows over a run of 200,000 events made
    every page at the end of the log take a second, and the rows are append-only)."""
    recorder = PostgresRecorder(db)
    with db.connect() as conn:
        _insert(conn, "run-scanned", range(2000))
    with db.connect() as conn:  # (a reader past it: a page that begins inside a commit reads it all)
        _insert(conn, "before-scanned", range(1))
    start = _reader_start(recorder)
    with db.connect(role=Role.WRITER) as conn:
        conn.execute("INSERT INTO event_commits (run_id, first_seq, last_seq) VALUES ('run-scanned', 0, 10^15)")
    with db.connect(role=Role.WRITER) as conn:
        conn.execute("INSERT INTO event_commits (run_id, first_seq, last_seq) VALUES ('run-scanned', 0, 1999)")
    with db.connect() as conn:
        _insert(conn, "after-scanned", range(1))
    assert [r for _, r, _ in _paged(recorder, start, 10)] == ["after-scanned"]
    plan = _since_plan(db, start, 10)
    assert sum(map(int, re.findall(r"Rows Removed by Filter: (\d+)", plan))) < 100, plan
