"""Least privilege: who may connect to the embedded server, and what each ELSPETH role may do."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import landscape.db
import landscape.roles
from landscape.db import Database, migrate
from landscape.errors import DatabaseUnavailable, StoreError
from landscape.roles import ELSPETH_ROLES, TABLES, Role, grants_current, readers_may_lock
from landscape.schema import metadata
from tests.engine_harness import run, write_csv
from tests.test_cli import PIPELINE

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = bool(os.environ.get("ELSPETH_TEST_DATABASE_URL"))


@pytest.fixture(scope="module")
def run_id(db: Database, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One run, written as the engine writes it: connected as the writer."""
    work = tmp_path_factory.mktemp("access")
    write_csv(work / "in.csv", ["id", "v"], [[1, 3], [2, 9], [3, "x"]])
    result = run(db.as_role(Role.WRITER), work, PIPELINE)
    assert result.outcome.status == "completed"
    return result.outcome.run_id


def test_the_engine_writes_a_run_as_the_writer(db: Database, run_id: str) -> None:
    with db.connect(role=Role.WRITER) as conn:
        who = conn.execute("SELECT current_user, session_user").fetchone()
    assert who == ("elspeth_writer", "elspeth_writer" if db.embedded else who[1])
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE run_id = %s", (run_id,)).fetchone()[0] > 0  # type: ignore[index]


def _refused(db: Database, role: Role, statement: str) -> str:
    with db.connect(role=role) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(statement)
        return str(err.value)


@pytest.mark.parametrize("table", ["events", "payloads"])
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {t} SET hash = hash",
        "DELETE FROM {t}",
        "TRUNCATE {t}",
        "ALTER TABLE {t} DISABLE TRIGGER ALL",
        "ALTER TABLE {t} ADD COLUMN x int",
        "DROP TABLE {t}",
    ],
)
def test_the_writer_cannot_change_or_remove_what_the_log_holds(
    db: Database, run_id: str, table: str, statement: str
) -> None:
    why = _refused(db, Role.WRITER, statement.format(t=table))
    assert "permission denied" in why or "must be owner" in why


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "COPY (SELECT 1) TO '/tmp/elspeth-writer-was-here'",
        "SELECT pg_read_file('/etc/passwd')",
        "CREATE ROLE intruder SUPERUSER",
        "SET ROLE postgres",
    ],
)
def test_the_writer_runs_nothing_on_the_server(db: Database, statement: str) -> None:
    why = _refused(db, Role.WRITER, statement)
    assert "permission denied" in why or "must be superuser" in why  # PostgreSQL 15's words for some


_ONE_EVENT = (
    "INSERT INTO events (run_id, seq, machine, entity_id, event_type, schema_version, recorded_at, payload, "
    "payload_hash, prev_hash, hash{extra}) VALUES ('run-placed', 0, 'run', 'run-placed', 'RunStarted', 1, now(), "
    "'\\x7b7d', '\\x00', '\\x00', '\\x00'{value})"
)


@pytest.mark.parametrize(
    "statement",
    [
        _ONE_EVENT.format(extra=", tx_id", value=", 1"),
        _ONE_EVENT.format(extra=", global_position", value=", 1"),
        "INSERT INTO event_commits (tx_id, run_id, first_seq, last_seq) VALUES (1, 'run-placed', 0, 0)",
    ],
)
def test_the_writer_cannot_choose_which_transaction_or_position_its_rows_have(db: Database, statement: str) -> None:
    """The server fills them in (cross-run readers order by them): a writer that chose them could
    put its events among another transaction's, or take another's commit row (a hostile review)."""
    assert "permission denied" in _refused(db, Role.WRITER, statement)


def test_the_writer_inserts_an_events_other_columns_and_a_commits_row_of_its_own(db: Database) -> None:
    with db.connect(role=Role.WRITER) as conn:
        conn.execute(_ONE_EVENT.format(extra="", value=""))
        conn.execute("INSERT INTO event_commits (run_id, first_seq, last_seq) VALUES ('run-placed', 0, 0)")
        mine = conn.execute("SELECT (pg_current_xact_id()::text)::bigint").fetchone()
        assert conn.execute("SELECT tx_id FROM events WHERE run_id = 'run-placed'").fetchone() == mine
        assert conn.execute("SELECT tx_id FROM event_commits WHERE run_id = 'run-placed'").fetchone() == mine
        conn.rollback()


def test_the_writer_is_no_superuser_and_owns_nothing(db: Database) -> None:
    with db.connect() as conn:
        attrs = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles "
            "WHERE rolname = 'elspeth_writer'"
        ).fetchone()
        owned = conn.execute("SELECT count(*) FROM pg_class WHERE relowner = 'elspeth_writer'::regrole").fetchone()
    assert attrs == (False, False, False, False, False)
    assert owned == (0,)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM payloads",
        "SELECT payload FROM events",
        "SELECT * FROM events",
        "INSERT INTO runs DEFAULT VALUES",
        "SELECT sha256 FROM artifacts",  # unsalted: one row's flush would confirm a guess at it
        # and each event's hashes a guess at its body (a plain RunResumed's: the input's hash)
        "SELECT payload_hash FROM events",
        "SELECT hash FROM events",
        "SELECT prev_hash FROM events",
        "SELECT source_fingerprint FROM runs",
        "SELECT * FROM artifacts",
    ],
)
def test_the_analyst_reads_no_row_data_and_writes_nothing(db: Database, run_id: str, statement: str) -> None:
    assert "permission denied" in _refused(db, Role.ANALYST, statement)


def test_the_analyst_reads_a_sink_flushes_other_columns(db: Database, run_id: str) -> None:
    with db.connect(role=Role.ANALYST) as conn:
        rows = conn.execute(
            "SELECT sink, position, rows, location FROM artifacts WHERE run_id = %s", (run_id,)
        ).fetchall()
    assert rows


def test_the_auditor_reads_every_table_and_writes_none(db: Database, run_id: str) -> None:
    with db.connect() as conn:
        found = conn.execute(
            "SELECT relname, relispartition FROM pg_class "
            "WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'p')"
        ).fetchall()
    tables = [name for name, partition in found if not partition]
    assert set(tables) <= set(TABLES)  # every table has a rule
    for partition in [name for name, is_partition in found if is_partition]:  # read through its table only
        assert "permission denied" in _refused(db, Role.AUDITOR, f"SELECT * FROM {partition} LIMIT 1"), partition
    for table in tables:
        with db.connect(role=Role.AUDITOR) as conn:
            conn.execute(f"SELECT * FROM {table} LIMIT 1")
        for statement in (f"INSERT INTO {table} DEFAULT VALUES", f"DELETE FROM {table}", f"TRUNCATE {table}"):
            assert "permission denied" in _refused(db, Role.AUDITOR, statement), statement


def test_every_table_of_the_schema_has_a_grant_rule() -> None:
    # A new table must be classified in landscape/roles.py, or no role could use it.
    assert set(metadata.tables) <= set(TABLES)


def _cookbook() -> dict[str, list[str]]:
    """The SQL blocks of docs/sql-cookbook.md, by section heading."""
    text = (ROOT / "docs" / "sql-cookbook.md").read_text(encoding="utf-8")
    sections: dict[str, list[str]] = {}
    for part in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = part.partition("\n")
        sections[heading.strip()] = re.findall(r"```sql\n(.*?)```", body, flags=re.DOTALL)
    return sections


def _bind(query: str, run_id: str) -> str:
    return query.replace(":run", f"'{run_id}'").replace(":n", "0")


def test_the_cookbook_queries_work_for_the_role_their_section_names(db: Database, run_id: str) -> None:
    sections = _cookbook()
    analyst, auditor = sections["Questions analysts ask"], sections["Row data (auditors)"]
    assert len(analyst) >= 5 and len(auditor) >= 3
    for query in analyst:
        with db.connect(role=Role.ANALYST) as conn:
            conn.execute(_bind(query, run_id)).fetchall()
    for query in auditor:
        with db.connect(role=Role.AUDITOR) as conn:
            assert conn.execute(_bind(query, run_id)).fetchall()
        assert "permission denied" in _refused(db, Role.ANALYST, _bind(query, run_id))


def test_an_upgrade_is_idempotent_and_two_at_once_both_succeed(db: Database) -> None:
    errors: list[BaseException] = []

    def upgrade() -> None:
        try:
            migrate(db)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=upgrade) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.connect() as conn:
        assert grants_current(conn)


def test_an_upgrade_puts_back_what_the_writer_must_not_hold(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("GRANT UPDATE, TRUNCATE ON events TO elspeth_writer")
        conn.execute("GRANT INSERT ON event_commits TO elspeth_writer")  # (its tx_id too)
        conn.execute("GRANT pg_execute_server_program TO elspeth_writer")
        conn.commit()
        assert not grants_current(conn)
    migrate(db)
    with db.connect() as conn:
        assert grants_current(conn)
        assert conn.execute(
            "SELECT pg_has_role('elspeth_writer', 'pg_execute_server_program', 'MEMBER')"
        ).fetchone() == (False,)
    assert "permission denied" in _refused(db, Role.WRITER, "TRUNCATE events")
    assert "permission denied" in _refused(
        db, Role.WRITER, "INSERT INTO event_commits (tx_id, run_id, first_seq, last_seq) VALUES (1, 'r', 0, 0)"
    )


def _not_current_until_upgraded(db: Database, grant: str) -> None:
    """`GRANT grant` leaves the store's grants not current, and an upgrade puts them right."""
    with db.connect() as conn:
        conn.execute(f"GRANT {grant}")
        conn.commit()
        assert not grants_current(conn)
    migrate(db)
    with db.connect() as conn:
        assert grants_current(conn)


@pytest.mark.parametrize(
    "grant", ["INSERT (tx_id) ON event_commits TO elspeth_writer", "INSERT ON event_commits TO PUBLIC"]
)
def test_an_upgrade_takes_back_a_column_the_writer_may_not_insert(db: Database, grant: str) -> None:
    _not_current_until_upgraded(db, grant)
    assert "permission denied" in _refused(
        db, Role.WRITER, "INSERT INTO event_commits (tx_id, run_id, first_seq, last_seq) VALUES (1, 'r', 0, 0)"
    )


@pytest.mark.parametrize(
    "grant",
    [
        "SELECT ON payloads TO PUBLIC",  # (every role reads the row data, the analyst too)
        "SELECT (data) ON payloads TO PUBLIC",
        "SELECT (payload) ON events TO PUBLIC",
        "INSERT (hash, run_id, row_index, kind, reason, erased_at, erased_by, seal_id) ON erasures TO elspeth_writer",
        "UPDATE (last_seq) ON event_commits TO elspeth_writer",
    ],
)
def test_grants_are_not_current_while_a_column_grant_or_public_breaks_the_rule(db: Database, grant: str) -> None:
    """A grant of some columns is not one of the table (has_table_privilege is false for it),
    and PUBLIC's is every role's: each kept the store 'current', so neither the embedded start
    nor a run on an external store asked for the upgrade that takes it back (a review)."""
    _not_current_until_upgraded(db, grant)


def test_db_roles_names_the_columns_a_role_may_insert_as_they_are(db: Database) -> None:
    """`db roles` said 'INSERT (not tx_id)' of the writer's column grants whatever they held: one
    of tx_id too (which an upgrade takes back) was shown as withheld, and a reader's grant of one
    column as the writer's rule (a review)."""
    with db.connect() as conn:
        conn.execute("GRANT INSERT (tx_id) ON event_commits TO elspeth_writer")
        conn.execute("GRANT INSERT (run_id) ON events TO elspeth_auditor")
        conn.commit()
    try:
        proc = _cli("db", "roles", database=db.conninfo)
        assert proc.returncode == 0, proc.stderr
        writer = proc.stdout.split("elspeth_writer", 1)[1].split("elspeth_analyst", 1)[0]
        auditor = proc.stdout.split("elspeth_auditor", 1)[1]
        assert "(not tx_id)" not in writer and re.search(r"SELECT INSERT {2,}.*\bevent_commits\b", writer)
        assert re.search(r"SELECT INSERT \(only run_id\)\s+events$", auditor, re.MULTILINE), auditor
    finally:
        migrate(db)


@pytest.mark.parametrize(
    "grant",
    [
        "INSERT ON events_p03 TO elspeth_writer",  # (a transaction id of its choosing, straight in)
        "INSERT (tx_id) ON events_p03 TO elspeth_writer",
        "SELECT ON node_states_p01 TO PUBLIC",
        "UPDATE (status) ON runs_p00 TO elspeth_auditor",
    ],
)
def test_a_grant_on_a_partition_is_not_current_and_an_upgrade_takes_it_back(db: Database, grant: str) -> None:
    """PostgreSQL checks a statement that names a partition against the partition's own grants,
    not its parent's: a grant there (the owner's default privileges put them on tables made
    later) passed the parent's rule by, and the store was 'current' (a review)."""
    if "events_p03" in grant:  # (`db roles` lists the parent tables, and says what is on others)
        with db.connect() as conn:
            conn.execute(f"GRANT {grant}")
            conn.commit()
        proc = _cli("db", "roles", database=db.conninfo)
        assert "beyond the rule" in proc.stdout and "on events_p03:" in proc.stdout, proc.stdout + proc.stderr
    _not_current_until_upgraded(db, grant)
    if "events_p03" in grant:
        assert "beyond the rule" not in _cli("db", "roles", database=db.conninfo).stdout
        with db.connect(role=Role.WRITER) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO events_p03 (tx_id) VALUES (1)")


@pytest.mark.parametrize(
    ("grant", "then"),
    [
        # setval: the writer chooses every writer's next global_position, or ends them all
        ("UPDATE ON SEQUENCE events_global_position_seq TO elspeth_writer", None),
        # a grant option: the writer gives the analyst the row data, and the upgrade's revoke failed
        ("SELECT ON payloads TO elspeth_writer WITH GRANT OPTION", "GRANT SELECT ON payloads TO elspeth_analyst"),
        ("SELECT (payload) ON events TO elspeth_auditor WITH GRANT OPTION", None),
    ],
)
def test_a_sequence_grant_or_a_grant_option_is_not_current_and_an_upgrade_takes_it_back(
    db: Database, grant: str, then: str | None
) -> None:
    """Neither was looked for, nor taken back; an upgrade after the writer had used its grant
    option failed: 'dependent privileges exist' (a review)."""
    with db.connect() as conn:
        conn.execute(f"GRANT {grant}")
        conn.commit()
        assert not grants_current(conn)
    if then:
        with db.connect(role=Role.WRITER) as conn:
            conn.execute(then)
            conn.commit()
    migrate(db)
    with db.connect() as conn:
        assert grants_current(conn)
    if then:
        with db.connect(role=Role.ANALYST) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT data FROM payloads")
    if "SEQUENCE" in grant:
        assert "permission denied" in _refused(db, Role.WRITER, "SELECT setval('events_global_position_seq', 1)")


@pytest.mark.skipif(
    EXTERNAL,
    reason="making the writer a partition's owner takes a superuser here (the owner must may CREATE in public)",
)
def test_an_upgrade_refuses_a_writer_that_owns_a_partition(db: Database) -> None:
    """The owner of events_p03 may DROP it (a sixteenth of every run's events) or disable its
    triggers, whatever its grants; an upgrade took its grants back and called the store current
    (a review)."""
    with db.connect() as conn:
        conn.execute("ALTER TABLE events_p03 OWNER TO elspeth_writer")
        conn.commit()
        assert not grants_current(conn)
    try:
        with pytest.raises(landscape.roles.RolesUnavailable, match="elspeth_writer owns the table events_p03"):
            migrate(db)
        with db.connect() as conn:
            assert not grants_current(conn)
    finally:
        with db.connect() as conn:
            conn.execute("ALTER TABLE events_p03 OWNER TO CURRENT_USER")
            conn.commit()
        migrate(db)


def test_an_upgrade_takes_back_a_grant_on_a_partition_of_another_schema(db: Database) -> None:
    """Its revoke named the partition without its schema: another table of that name (the one it
    replaced) lost its grants, and the partition's stayed (a review)."""
    with db.connect() as conn:
        conn.execute("CREATE SCHEMA archive")
        conn.execute("ALTER TABLE events DETACH PARTITION events_p13")
        conn.execute("CREATE TABLE archive.events_p13 (LIKE events)")
        conn.execute("GRANT TRUNCATE ON archive.events_p13 TO elspeth_writer")
        conn.execute(
            "ALTER TABLE events ATTACH PARTITION archive.events_p13 FOR VALUES WITH (modulus 16, remainder 13)"
        )
        conn.commit()
        assert not grants_current(conn)
    try:
        migrate(db)
        with db.connect() as conn:
            assert grants_current(conn)
    finally:
        with db.connect() as conn:
            conn.execute("ALTER TABLE events DETACH PARTITION archive.events_p13")
            conn.execute("ALTER TABLE events ATTACH PARTITION events_p13 FOR VALUES WITH (modulus 16, remainder 13)")
            conn.execute("DROP SCHEMA archive CASCADE")
            conn.commit()
        migrate(db)


@pytest.mark.parametrize("through", ["a role it is a member of", "another grantor"])
def test_an_upgrade_that_cannot_take_a_grant_back_fails_saying_so(db: Database, through: str) -> None:
    """A grant the owner's revokes do not reach (to a role the writer is a member of, or made by a
    role holding a grant option) left the writer able to name a transaction in event_commits
    after every upgrade, each said to be done (a review): the upgrade now fails, naming why."""
    setup = {
        "a role it is a member of": ["CREATE ROLE elspeth_test_sneaky", "GRANT elspeth_test_sneaky TO elspeth_writer",
                                     "GRANT INSERT ON event_commits TO elspeth_test_sneaky"],
        # (the owner a member of it, to act as it: on PostgreSQL 15 the maker of a role is not)
        "another grantor": ["CREATE ROLE elspeth_test_sneaky", "GRANT elspeth_test_sneaky TO CURRENT_USER",
                            "GRANT INSERT ON event_commits TO elspeth_test_sneaky WITH GRANT OPTION",
                            "SET ROLE elspeth_test_sneaky",
                            "GRANT INSERT ON event_commits TO elspeth_writer", "RESET ROLE"],
    }[through]  # fmt: skip
    try:
        with db.connect() as conn:
            for statement in setup:
                conn.execute(statement)
            conn.commit()
        with pytest.raises(landscape.roles.RolesUnavailable, match="still hold more than their rule"):
            migrate(db)
    finally:
        with db.connect() as conn:
            conn.execute("REVOKE ALL ON event_commits FROM elspeth_test_sneaky CASCADE")
            conn.execute("DROP ROLE elspeth_test_sneaky")
            conn.commit()
    migrate(db)
    with db.connect() as conn:
        assert grants_current(conn)


@pytest.mark.skipif(EXTERNAL, reason="the SET ROLE path is exercised against the embedded superuser")
def test_on_an_external_server_a_member_connects_and_then_acts_as_the_role(db: Database) -> None:
    external = Database(db.conninfo, "as if external")  # the superuser may become any role
    with external.connect(role=Role.WRITER) as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == ("elspeth_writer", "postgres")
        # By a statement, not the startup option `-c role=…`: PgBouncer refuses a connection
        # that sends one (or, told to ignore it, drops it and leaves the session the user's).
        assert "options" not in conninfo_to_dict(conn.info.dsn)
        with pytest.raises(psycopg.Error):
            conn.execute("TRUNCATE events")
        conn.rollback()  # a rollback does not give the user back (the role is the session's)
        assert conn.execute("SELECT current_user").fetchone() == ("elspeth_writer",)


@pytest.mark.skipif(EXTERNAL, reason="the SET ROLE path is exercised against the embedded superuser")
def test_on_an_external_server_the_owner_is_its_login_whatever_a_session_was_set_to(db: Database) -> None:
    """A session a pooler hands on may come set to its last client's role (a pooler told not to
    reset sessions): the owner's is put back to its login's own, the default role its login is
    given kept (a startup option stands for `ALTER ROLE … SET role` here); a role's connection
    is that role."""
    external = Database(db.conninfo, "as if external")
    with psycopg.connect(db.conninfo) as conn:
        conn.execute("SET ROLE elspeth_analyst")  # (as its last client left it)
        conn.commit()
        external._begin(conn, Role.OWNER, becomes=False)
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    with external.connect(role=Role.AUDITOR) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("elspeth_auditor",)
    given = Database(make_conninfo(db.conninfo, options="-c role=elspeth_analyst"), "as if external")
    with given.connect(role=Role.OWNER) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("elspeth_analyst",)


def _socket_dir(url: str) -> str:
    return parse_qs(urlsplit(url).query)["host"][0]


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), user="nobody", group="nogroup", extra_groups=[], capture_output=True, text=True, timeout=60,
        cwd="/", stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"},
    )  # fmt: skip


def _psql_for_nobody() -> str | None:
    """A psql that `nobody` can run: the bundled one, or the system's."""
    from landscape.embedded import _bin_dir

    for candidate in (str(_bin_dir() / "psql"), shutil.which("psql")):
        if candidate:
            try:
                if _as_nobody(candidate, "--version").returncode == 0:
                    return candidate
            except OSError:
                continue
    return None


@pytest.mark.skipif(EXTERNAL, reason="about the embedded server")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another OS user (nobody)")
def test_another_os_user_cannot_connect_to_the_embedded_server(server_url: str) -> None:
    psql = _psql_for_nobody()
    if psql is None:
        pytest.skip("no psql that the user nobody can run")
    sockets = _socket_dir(server_url)
    for user in ("postgres", *ELSPETH_ROLES, "nobody"):
        proc = _as_nobody(psql, "-X", "-w", "-h", sockets, "-U", user, "-d", "postgres", "-c", "SELECT 1")
        assert proc.returncode != 0, f"nobody connected as {user}"
        assert "Permission denied" in proc.stderr or "authentication failed" in proc.stderr, proc.stderr


@pytest.mark.skipif(EXTERNAL, reason="about the embedded server")
def test_the_embedded_server_trusts_nobody_and_maps_only_its_user(server_url: str) -> None:
    import pwd

    with psycopg.connect(server_url) as conn:
        rules = conn.execute("SELECT type, auth_method, options FROM pg_hba_file_rules").fetchall()
        mapped = {r[0] for r in conn.execute("SELECT sys_name FROM pg_ident_file_mappings")}
        socket_mode = conn.execute("SHOW unix_socket_permissions").fetchone()
        tcp = conn.execute("SHOW listen_addresses").fetchone()
    assert rules == [("local", "peer", ["map=elspeth"])]
    assert mapped == {pwd.getpwuid(os.geteuid()).pw_name}
    assert socket_mode == ("0700",) and tcp == ("",)
    assert os.stat(_socket_dir(server_url)).st_mode & 0o777 == 0o700


def _cli(*args: str, database: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    env["ELSPETH_DATABASE_URL"] = database
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *args],
        cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_db_roles_shows_each_role_and_what_it_may_do(db: Database) -> None:
    proc = _cli("db", "roles", database=db.conninfo)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for role in ELSPETH_ROLES:
        assert any(line.split()[:1] == [role] for line in lines), proc.stdout
    writer = proc.stdout.split("elspeth_writer", 1)[1].split("elspeth_analyst", 1)[0]
    assert "SELECT INSERT" in writer and "events" in writer and "TRUNCATE" not in writer
    assert re.search(r"SELECT INSERT \(not global_position, tx_id\)\s+events$", writer, re.MULTILINE), writer
    analyst = proc.stdout.split("elspeth_analyst", 1)[1].split("elspeth_auditor", 1)[0]
    assert "SELECT (not payload, payload_hash, prev_hash, hash)" in analyst and re.search(r"none\s+payloads", analyst)
    assert "SELECT (not sha256)" in analyst


@pytest.mark.skipif(EXTERNAL, reason="sets a password on the shared test server's role")
def test_db_roles_sets_a_password_from_stdin_never_from_argv(db: Database) -> None:
    secret = "s3cret/with?url#chars@"
    proc = _cli("db", "roles", "--set-password", "elspeth_auditor", database=db.conninfo, stdin=secret + "\n")
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr
    with db.connect() as conn:
        stored = conn.execute(
            "SELECT rolpassword, rolcanlogin FROM pg_authid WHERE rolname = 'elspeth_auditor'"
        ).fetchone()
        conn.execute("ALTER ROLE elspeth_auditor PASSWORD NULL")  # back as the other tests found it
        conn.commit()
    assert stored is not None and stored[0].startswith("SCRAM-SHA-256$") and stored[1]
    unknown = _cli("db", "roles", "--set-password", "postgres", database=db.conninfo, stdin="x\n")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr


def _owns_lock_functions(db: Database) -> bool:
    """Whether the test server's account may decide who takes advisory locks (it owns
    PostgreSQL's functions: a superuser, as on the embedded server)."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT pg_has_role(current_user, proowner, 'USAGE') FROM pg_proc "
            "WHERE oid = 'pg_advisory_lock(bigint)'::regprocedure"
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("role", [Role.ANALYST, Role.AUDITOR])
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT pg_advisory_lock(hashtextextended('run-x', 0))",
        "SELECT pg_try_advisory_lock(7419001)",
        "SELECT pg_advisory_lock_shared(1, 2)",
        "SELECT pg_try_advisory_xact_lock_shared(1)",
    ],
)
def test_the_readers_take_no_advisory_lock(db: Database, role: Role, statement: str) -> None:
    """A reader holding a run's lock would keep its resume (or `db upgrade`) out."""
    if not _owns_lock_functions(db):
        pytest.skip("only the owner of PostgreSQL's functions (a superuser) may take them from PUBLIC")
    assert "permission denied" in _refused(db, role, statement)
    with db.connect(role=Role.WRITER) as conn:
        assert conn.execute("SELECT pg_try_advisory_lock(hashtextextended('run-x', 0))").fetchone() == (True,)


def test_a_reader_holding_a_runs_lock_is_no_live_writer(db: Database, run_id: str) -> None:
    """Where the lock functions stay open to PUBLIC (an upgrade by an account that does not own
    them), `writer_alive` counts only a holder that may write the run."""
    from landscape.postgres import PostgresRecorder

    key = "SELECT pg_advisory_lock(hashtextextended(%s, 0))"
    with db.connect() as conn:
        conn.execute("GRANT EXECUTE ON FUNCTION pg_advisory_lock(bigint) TO PUBLIC")
        conn.commit()
        assert readers_may_lock(conn)
        assert not grants_current(conn) or not _owns_lock_functions(db)
    try:
        with db.connect(role=Role.ANALYST) as analyst:
            (privileged,) = analyst.execute(
                "SELECT pg_has_role(session_user, %s, 'MEMBER')", (Role.WRITER.value,)
            ).fetchone() or (False,)
            if privileged:  # pg_locks shows the session's login, not the role it acts as
                pytest.skip("the analyst here is a login that may write, acting as the role: its lock is a writer's")
            analyst.execute(key, (run_id,))
            analyst.commit()
            for role in (Role.ANALYST, Role.WRITER, Role.OWNER):
                assert not PostgresRecorder(db.as_role(role)).writer_alive(run_id), role
        with db.connect(role=Role.WRITER) as writer:
            writer.execute(key, (run_id,))
            writer.commit()
            for role in (Role.ANALYST, Role.WRITER, Role.OWNER):
                assert PostgresRecorder(db.as_role(role)).writer_alive(run_id), role
    finally:
        migrate(db)
    with db.connect() as conn:
        assert readers_may_lock(conn) is not _owns_lock_functions(db)


def test_an_upgrade_names_who_holds_the_schema_lock_rather_than_wait_for_ever(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(landscape.db, "SCHEMA_LOCK_WAIT", "50ms")  # it is held throughout: no race
    with db.connect(autocommit=True) as holder:
        holder.execute("SELECT set_config('application_name', 'stuck session', false), pg_advisory_lock(7419001)")
        pid = holder.info.backend_pid
        with pytest.raises(StoreError, match=rf"session pid {pid} \(role \w+, 'stuck session'\) holds the schema lock"):
            migrate(db)
    migrate(db)  # once it is let go


@pytest.mark.parametrize("role", [Role.WRITER, Role.ANALYST, Role.AUDITOR])
def test_only_the_owner_writes_erasure_records(db: Database, run_id: str, role: Role) -> None:
    statement = (
        "INSERT INTO erasures (hash, run_id, row_index, kind, reason, erased_at, erased_by) "
        f"VALUES ('\\x00', '{run_id}', 0, 'request', 'court order', now() - interval '30 days', 'postgres')"
    )
    assert "permission denied" in _refused(db, role, statement)


def test_an_erasure_record_says_truly_who_wrote_it_and_when(db: Database) -> None:
    with db.connect() as conn:
        who, fresh = conn.execute(
            "INSERT INTO erasures (hash, run_id, row_index, kind, reason, erased_at, erased_by) "
            "VALUES ('\\x01', 'run-stamp', 0, 'request', 'test', now() - interval '30 days', 'someone else') "
            "RETURNING erased_by = current_user, erased_at = now()"
        ).fetchone()  # type: ignore[misc]
        conn.rollback()
    assert who and fresh


def test_db_upgrade_by_a_role_that_may_not_take_the_schema_lock_is_one_error(db: Database) -> None:
    """The analyst's or the auditor's role ran `db upgrade`: a 46-line traceback of psycopg's
    InsufficientPrivilege (a hostile review). One line now, and nothing changed."""
    with db.connect() as conn:
        if readers_may_lock(conn):
            pytest.skip("the readers may take advisory locks on this server (db upgrade could not revoke it)")
    for role in (Role.ANALYST, Role.AUDITOR):
        as_reader = dataclasses.replace(db, conninfo=psycopg.conninfo.make_conninfo(db.conninfo, user=role.value))
        try:
            as_reader.connect().close()
        except DatabaseUnavailable:
            pytest.skip(f"{role.value} cannot log in here (only the embedded store gives the roles a login)")
        with pytest.raises(StoreError, match=r"this role may not take the schema lock .*store's owner or a superuser"):
            migrate(as_reader)


def test_another_applications_alembic_database_is_not_taken_for_a_store(server_url: str) -> None:
    """An `alembic_version` beside no ELSPETH table was read as a newer ELSPETH's schema, or as
    one to upgrade (which made the server's roles, then failed half-way): a hostile review."""
    from landscape.errors import SchemaOutdated
    from tests.conftest import scratch_database

    with scratch_database(server_url, "t_foreign") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
            conn.execute("INSERT INTO alembic_version VALUES ('ae1027a6acf')")
        for upgrade in (False, True):
            refused = r"another application's schema \(alembic_version ae1027a6acf"
            with pytest.raises(SchemaOutdated, match=refused), landscape.db.open_database(url, upgrade=upgrade):
                pass


def test_a_store_whose_server_dies_while_it_is_made_is_one_line_saying_why(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A home on a full disk: the server died (PANIC, no room for its WAL) in the middle of the
    schema's creation, and the unlock in `migrate`'s `finally`, on the dead session, replaced
    why with a traceback of its own ("server closed the connection"): a hostile review. Here the
    session is ended from the server's side at the same point."""
    from tests.conftest import scratch_database

    def die(conn: psycopg.Connection[object], **_: object) -> None:
        conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    monkeypatch.setattr(landscape.roles, "ensure_roles", die)
    with scratch_database(server_url, "t_dies") as url:
        said = r"lost the database while preparing the audit store in .*: terminating connection"
        with pytest.raises(DatabaseUnavailable, match=said), landscape.db.open_database(url):
            pass


def test_a_store_whose_statement_fails_while_it_is_made_says_why_not_that_the_transaction_aborted(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk the server survives (SQLSTATE 53100): the failed statement left the session's
    transaction aborted, and the unlock in `migrate` then failed as 'current transaction is
    aborted', which was all the user saw (a review of the fix above)."""
    from tests.conftest import scratch_database

    def disk_full(conn: psycopg.Connection[object], **_: object) -> None:
        conn.execute(
            "DO $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100'; END $$"
        )

    monkeypatch.setattr(landscape.roles, "ensure_roles", disk_full)
    with scratch_database(server_url, "t_full") as url:
        said = r"preparing the audit store in .*: could not extend file: No space left on device"
        with pytest.raises(DatabaseUnavailable, match=said), landscape.db.open_database(url):
            pass
        with psycopg.connect(url, autocommit=True) as conn:  # the lock was let go
            assert conn.execute("SELECT pg_try_advisory_lock(7419001)").fetchone() == (True,)
