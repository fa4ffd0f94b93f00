"""The roles ELSPETH's users act as, and what each may do to the audit store.

- **writer** (`elspeth_writer`): what `run` and `resume` connect as. Appends to the log tables
  and maintains the projections; cannot change or remove a logged row, owns no table (so cannot
  ALTER, DROP or disable a trigger), is no superuser and holds none of the server's file or
  program roles.
- **analyst** (`elspeth_analyst`): reads the projections, not the row data (`payloads`, the
  `payload` column of `events`) nor what confirms a guess at it (`artifacts.sha256`) unless an
  owner grants it; `db upgrade` leaves such extra grants to analysts alone.
- **auditor** (`elspeth_auditor`): reads everything, writes nothing.

The owner (whoever owns the tables) runs `db upgrade` and `purge`: it alone deletes payloads and
writes the erasure records that must go with each deletion.

Advisory locks: a run's writer holds a session lock keyed by its run (`landscape.commits`) and
`db upgrade` one for the schema. PostgreSQL lets every role take any advisory lock, so a
read-only role could sit on a run's key and keep its `resume` (or an upgrade) out for as long as
its session lives. Where the upgrading account may (it owns the lock functions: a superuser, as
on the embedded server), `apply_grants` takes EXECUTE on the lock-taking functions from PUBLIC in
this database and gives it to the writer and the tables' owner. Elsewhere that is left as it is,
and readers of the locks trust only a holder that may write (`landscape.postgres.writer_alive`).

Roles belong to the whole server, grants to one database: `ensure_roles` makes the roles once per
server, `apply_grants` gives them their privileges on this database's tables, both idempotent and
run by `migrate` (i.e. `elspeth db upgrade`) as the schema's owner. Grants follow `TABLES`, a list
by table name rather than an alembic revision, so a table added later gets its grants from the
same rule on the next upgrade, and a revision never freezes an outdated policy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from landscape.errors import LandscapeError, first_line
from landscape.role_names import ELSPETH_ROLES as ELSPETH_ROLES  # re-exported: the names live
from landscape.role_names import Role as Role  # in role_names, which the CLI loads without the driver
from landscape.table_names import PROJECTION_TABLE_NAMES


class RolesUnavailable(LandscapeError):
    """The roles cannot be created or made safe by the account running `db upgrade`."""


class Kind(enum.Enum):
    LOG = "append-only log"  # the source of truth: written once, never changed
    ERASURES = "erasure records"  # append-only too, but written by the owner alone (`elspeth purge`)
    ROW_DATA = "row data"  # the rows themselves
    PROJECTION = "projection"
    SCHEMA = "schema version"


TABLES: dict[str, Kind] = {
    "events": Kind.LOG,
    "checkpoints": Kind.LOG,  # signed checkpoints, once a revision creates the table
    "event_commits": Kind.LOG,  # where cross-run readers find the events (0017): appended with them
    # Written by `elspeth purge` as the owner, in the transaction that deletes the payloads. A
    # writer that could add records could explain away a payload it never stored, or put its
    # own words on another run's erasure.
    "erasures": Kind.ERASURES,
    "erasure_seals": Kind.ERASURES,  # purge's signed notes over its records (landscape/seal.py)
    "payloads": Kind.ROW_DATA,
    "alembic_version": Kind.SCHEMA,
    "store_meta": Kind.SCHEMA,
    **{name: Kind.PROJECTION for name in PROJECTION_TABLE_NAMES},
}

# Columns that hold row data, or let a guess at a row be confirmed: analysts read the others
# only. A sink file's SHA-256 (`artifacts.sha256`) is unsalted, and a flush of one row makes the
# difference of two such prefixes that row's bytes (migration 0013); the input file's
# (`runs.source_fingerprint`) is one of a guessed file (0016). An event's hashes confirm a guess
# at its body, and so at either hash in it (a plain RunResumed's body is the input file's hash
# and no more): its `payload_hash`, and its chain `hash` (of its columns, its `prev_hash` and
# its `payload_hash`), are withheld with the body (0016).
ROW_DATA_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": ("payload", "payload_hash", "hash", "prev_hash"),
    "artifacts": ("sha256",),
    "runs": ("source_fingerprint",),
}

# Columns the writer may not insert, where the server fills them in: which transaction wrote an
# event or a commit's row (`tx_id`, a default) and an event's place across runs (`global_position`,
# an identity), by which cross-run readers order the events (`read_since`) and a resume tells a
# later flush (`flushed_since`). A writer that chose them could put its events among another
# transaction's, or take another transaction's commit row (whose commit would then fail). The
# writer inserts the other columns (a column grant).
WRITER_WITHHELD: dict[str, tuple[str, ...]] = {
    "events": ("global_position", "tx_id"),
    "event_commits": ("tx_id",),
}

_ALL = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
# Those that may also be granted on some columns of a table only.
_COLUMN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "REFERENCES")

# (kind, role) -> the table privileges it gets; anything absent gets nothing.
PRIVILEGES: dict[tuple[Kind, str], tuple[str, ...]] = {
    (Kind.LOG, Role.WRITER): ("SELECT", "INSERT"),
    (Kind.ERASURES, Role.WRITER): ("SELECT",),  # resume and replay read why a payload is absent
    (Kind.ROW_DATA, Role.WRITER): ("SELECT", "INSERT"),
    (Kind.PROJECTION, Role.WRITER): ("SELECT", "INSERT", "UPDATE", "DELETE"),
    (Kind.SCHEMA, Role.WRITER): ("SELECT",),
    (Kind.LOG, Role.ANALYST): ("SELECT",),  # minus ROW_DATA_COLUMNS (here and for projections)
    (Kind.ERASURES, Role.ANALYST): ("SELECT",),
    (Kind.PROJECTION, Role.ANALYST): ("SELECT",),
    (Kind.SCHEMA, Role.ANALYST): ("SELECT",),
    **{(kind, Role.AUDITOR.value): ("SELECT",) for kind in Kind},
}

# Attributes none of the roles may hold: each lets a role bypass grants, or make roles that do.
_ATTRIBUTES = ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls")
_ATTRIBUTE_OFF = {
    "rolsuper": "NOSUPERUSER",
    "rolcreaterole": "NOCREATEROLE",
    "rolcreatedb": "NOCREATEDB",
    "rolreplication": "NOREPLICATION",
    "rolbypassrls": "NOBYPASSRLS",
}
# Built-in roles that reach past table grants: server-side programs and files, or every table.
FORBIDDEN_MEMBERSHIPS = (
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_write_all_data",
)


def ensure_roles(conn: psycopg.Connection[Any], *, login: bool) -> None:
    """Create the three roles if missing, and make sure none holds a dangerous attribute or
    membership. `login`: may log in (the embedded server, through its peer map); elsewhere they
    are created NOLOGIN and `set_password` lets one log in. Commits.

    Safe when two `db upgrade` run at once, also on two databases of one server (where no
    advisory lock is shared): a role the other made first is taken as found, then checked."""
    for role in ELSPETH_ROLES:
        if _attributes(conn, role) is None:
            try:
                conn.execute(
                    sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(role), sql.SQL("LOGIN" if login else "NOLOGIN"))
                )
                conn.commit()
            except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                conn.rollback()  # created by a concurrent upgrade a moment ago
            except psycopg.errors.InsufficientPrivilege as e:
                conn.rollback()
                raise RolesUnavailable(
                    f"cannot create the role {role}: {first_line(e)} — run `elspeth db upgrade` as a role with "
                    "CREATEROLE (or a superuser), or have an administrator run it once"
                ) from e
        _make_safe(conn, role, login)


def _attributes(conn: psycopg.Connection[Any], role: str) -> dict[str, bool] | None:
    row = conn.execute(
        f"SELECT {', '.join(_ATTRIBUTES)}, rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)
    ).fetchone()
    conn.commit()
    return None if row is None else dict(zip((*_ATTRIBUTES, "rolcanlogin"), row, strict=True))


def _make_safe(conn: psycopg.Connection[Any], role: str, login: bool) -> None:
    found = _attributes(conn, role)
    assert found is not None
    changes = [_ATTRIBUTE_OFF[a] for a in _ATTRIBUTES if found[a]]
    if login and not found["rolcanlogin"]:
        changes.append("LOGIN")
    # Only what differs is altered: most upgrades change nothing, and two at once do not
    # collide on the same catalog row. A non-superuser may not even name SUPERUSER.
    statements = [sql.SQL("ALTER ROLE {} {}").format(sql.Identifier(role), sql.SQL(change)) for change in changes]
    for member_of in FORBIDDEN_MEMBERSHIPS:
        direct = conn.execute(
            "SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member "
            "WHERE g.rolname = %s AND r.rolname = %s",
            (member_of, role),
        ).fetchone()
        if direct:
            statements.append(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(member_of), sql.Identifier(role)))
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    except psycopg.Error as e:
        conn.rollback()
        raise RolesUnavailable(
            f"the role {role} holds privileges ELSPETH must take away ({', '.join(changes) or 'a built-in role'}) "
            f"and this account cannot: {first_line(e)} — have a superuser run `elspeth db upgrade`"
        ) from e
    indirect = conn.execute(
        "SELECT g FROM unnest(%s::text[]) g WHERE pg_has_role(%s, g, 'USAGE')", (list(FORBIDDEN_MEMBERSHIPS), role)
    ).fetchall()
    conn.commit()
    if indirect:
        raise RolesUnavailable(
            f"the role {role} inherits {', '.join(r[0] for r in indirect)} through another role it is a member "
            f"of: revoke that membership (\\du {role} in psql shows it), then run `elspeth db upgrade` again"
        )


def _tables(conn: psycopg.Connection[Any]) -> list[str]:
    """The audit tables that exist in the schema ELSPETH's tables live in."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace "
        "AND c.relkind IN ('r', 'p', 'v', 'm') AND c.relname = ANY(%s) ORDER BY 1",
        (list(TABLES),),
    ).fetchall()
    return [r[0] for r in rows]


# The partitions of the audit tables (at any depth), their sequences, and what PUBLIC, the writer
# or the auditor (or a role either is a member of) holds on one, on the whole of it or on a
# column, or owns. Each role's grants are on the partitioned tables, which every statement of
# ELSPETH's goes through; a partition is reached by name only by its owner. A grant on one would
# pass the parent's rule by: the writer inserting a transaction id it chose straight into
# `events_p03` (which PostgreSQL checks against the partition's grants, not the parent's), PUBLIC
# reading its payloads. The owner's default privileges put grants on tables made later,
# partitions too. A sequence's UPDATE is setval: the writer would choose the global_position of
# every writer's next events (`WRITER_WITHHELD`), or end them all at the sequence's maximum. And
# the owner of a partition may DROP it, or disable its triggers, whatever its grants (a review).
# On the audit tables themselves, a grant option of the writer's or the auditor's: each may then
# give the analyst (whose grants are the owner's decision) the row data, and its grant made
# `apply_grants`' revoke fail ('dependent privileges exist'). (The analyst is left to the owner,
# as on the parents.)
_UNDER = """
  SELECT c.oid, n.nspname, c.relname, c.relacl, c.relowner FROM unnest(%(tables)s::text[]) t(name)
  CROSS JOIN LATERAL pg_catalog.pg_partition_tree(pg_catalog.to_regclass(t.name)) tree
  JOIN pg_catalog.pg_class c ON c.oid = tree.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE tree.level > 0
  UNION ALL SELECT s.oid, n.nspname, s.relname, s.relacl, s.relowner FROM unnest(%(tables)s::text[]) t(name)
  JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::regclass
   AND d.refobjid = pg_catalog.to_regclass(t.name) AND d.classid = 'pg_catalog.pg_class'::regclass
   AND d.deptype IN ('a', 'i')
  JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
"""
_PARTITION_GRANTS = f"""
WITH parts AS ({_UNDER}
), tables AS (
  SELECT c.oid, c.relname, c.relacl FROM unnest(%(tables)s::text[]) t(name)
  JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(t.name)
), acls AS (
  SELECT relname, relacl AS acl, false AS options FROM parts WHERE relacl IS NOT NULL
  UNION ALL SELECT p.relname, a.attacl, false FROM parts p JOIN pg_catalog.pg_attribute a ON a.attrelid = p.oid
  WHERE a.attacl IS NOT NULL AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL SELECT relname, relacl, true FROM tables WHERE relacl IS NOT NULL
  UNION ALL SELECT t.relname, a.attacl, true FROM tables t JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid
  WHERE a.attacl IS NOT NULL AND a.attnum > 0 AND NOT a.attisdropped
)
SELECT relname FROM acls CROSS JOIN LATERAL pg_catalog.aclexplode(acl) x
WHERE (x.is_grantable OR NOT options)
  AND (x.grantee = 0 OR EXISTS (SELECT 1 FROM unnest(%(roles)s::text[]) r(name)
                                WHERE pg_catalog.pg_has_role(r.name, x.grantee, 'MEMBER')))
UNION SELECT relname FROM parts WHERE EXISTS (SELECT 1 FROM unnest(%(roles)s::text[]) r(name)
                                              WHERE pg_catalog.pg_has_role(r.name, relowner, 'MEMBER'))
ORDER BY 1
"""


def beyond_the_parents(conn: psycopg.Connection[Any]) -> list[str]:
    """The partitions and sequences of the audit tables on which PUBLIC, the writer or the
    auditor holds a privilege, or which one of them owns, and the tables on which the writer or
    the auditor holds a grant option (`_PARTITION_GRANTS`): none where the rule holds."""
    rows = conn.execute(
        _PARTITION_GRANTS, {"tables": _tables(conn), "roles": [Role.WRITER.value, Role.AUDITOR.value]}
    ).fetchall()
    conn.commit()
    return [r[0] for r in rows]


def _partitions(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """The partitions of the audit tables, at any depth, and their sequences: (schema, name), as
    an owner may attach a table of another schema."""
    rows = conn.execute(f"SELECT nspname, relname FROM ({_UNDER}) p ORDER BY 2", {"tables": _tables(conn)}).fetchall()
    return [(r[0], r[1]) for r in rows]


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def apply_grants(conn: psycopg.Connection[Any]) -> None:
    """Give the roles exactly their privileges on this database's audit tables, in one
    transaction (no moment with too much or too little). The writer and the auditor are reset
    to the rule each time, and PUBLIC holds nothing on them nor on their partitions (where the
    writer and the auditor hold nothing either: see `_PARTITION_GRANTS`); an analyst keeps what
    an owner granted beyond it. Commits."""
    try:
        with conn.transaction():
            _refuse_ownership(conn)
            schema = conn.execute("SELECT current_schema(), current_database()").fetchone()
            assert schema is not None
            for role in ELSPETH_ROLES:
                if not conn.execute(
                    "SELECT has_database_privilege(%s, current_database(), 'CONNECT')", (role,)
                ).fetchone()[0]:  # type: ignore[index]
                    conn.execute(
                        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                            sql.Identifier(schema[1]), sql.Identifier(role)
                        )
                    )
                if not conn.execute("SELECT has_schema_privilege(%s, current_schema(), 'USAGE')", (role,)).fetchone()[
                    0
                ]:  # type: ignore[index]
                    conn.execute(
                        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                            sql.Identifier(schema[0]), sql.Identifier(role)
                        )
                    )
            for table in _tables(conn):
                _grant_table(conn, table, TABLES[table])
            for schema_name, part in _partitions(conn):
                # (also each column's: REVOKE on a table takes its columns' grants back too; and
                # CASCADE those the writer or the auditor made with a grant option)
                conn.execute(
                    sql.SQL("REVOKE ALL ON {} FROM PUBLIC, {}, {} CASCADE").format(
                        sql.Identifier(schema_name, part),
                        sql.Identifier(Role.WRITER.value),
                        sql.Identifier(Role.AUDITOR.value),
                    )
                )
            _grant_locks(conn)
    except psycopg.errors.InsufficientPrivilege as e:
        raise RolesUnavailable(
            f"cannot grant the ELSPETH roles their privileges: {first_line(e)} — run `elspeth db upgrade` as the "
            "owner of the audit tables"
        ) from e
    # What this account's revokes cannot reach: a grant to a role the writer or the auditor is a
    # member of, or one made by another grantor (a role holding a grant option). Left, it kept
    # the store short of its rule after every upgrade, said as done (a review): the embedded
    # server upgraded again at each start and went on, an external store's runs were each told
    # to run the upgrade that could not put it right.
    if not grants_current(conn):
        raise RolesUnavailable(
            "the ELSPETH roles still hold more than their rule after it was applied, which this account's revokes "
            "do not reach: a privilege on an audit table, a partition or a sequence granted to a role that "
            f"{Role.WRITER.value} or {Role.AUDITOR.value} is a member of, or granted by another role than the "
            "tables' owner (with a grant option); find it (psql: \\dp and \\du) and revoke it, as its grantor"
        )


def _grant_table(conn: psycopg.Connection[Any], table: str, kind: Kind) -> None:
    target = sql.Identifier(table)
    # What PUBLIC holds every role holds, the writer and the readers too: the rule below could not
    # hold (a hostile review granted INSERT on event_commits to PUBLIC, and every upgrade after
    # left the writer able to name a transaction, and the store never up to the rule).
    conn.execute(sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(target))
    for role in ELSPETH_ROLES:
        who = sql.Identifier(role)
        if role != Role.ANALYST:
            # CASCADE: with what it granted on with a grant option (`_PARTITION_GRANTS`), or the
            # revoke fails ('dependent privileges exist')
            conn.execute(sql.SQL("REVOKE ALL ON {} FROM {} CASCADE").format(target, who))
        privileges = PRIVILEGES.get((kind, role), ())
        if role == Role.WRITER and table in WRITER_WITHHELD and "INSERT" in privileges:
            inserted = [c for c in _columns(conn, table) if c not in WRITER_WITHHELD[table]]
            conn.execute(
                sql.SQL("GRANT INSERT ({}) ON {} TO {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, inserted)), target, who
                )
            )
            privileges = tuple(p for p in privileges if p != "INSERT")
        if not privileges:
            continue
        withheld = ROW_DATA_COLUMNS.get(table, ()) if role == Role.ANALYST else ()
        if withheld:
            columns = [c for c in _columns(conn, table) if c not in withheld]
            conn.execute(
                sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, columns)), target, who
                )
            )
        else:
            conn.execute(
                sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(", ").join(map(sql.SQL, privileges)), target, who)
            )


def _lock_functions(conn: psycopg.Connection[Any]) -> list[tuple[str, bool, bool, bool]]:
    """The advisory-lock functions that take a lock (the unlocking ones release only the
    caller's own locks): (signature, whether this account may revoke them, whether the writer
    may execute them, whether the analyst or the auditor may). The roles must exist."""
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, pg_has_role(current_user, p.proowner, 'USAGE'), "
        "has_function_privilege(%s, p.oid, 'EXECUTE'), "
        "has_function_privilege(%s, p.oid, 'EXECUTE') OR has_function_privilege(%s, p.oid, 'EXECUTE') "
        "FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace "
        "AND p.proname ~ '^pg_(try_)?advisory_(xact_)?lock(_shared)?$' ORDER BY 1",
        (Role.WRITER.value, Role.ANALYST.value, Role.AUDITOR.value),
    ).fetchall()
    return [(str(r[0]), bool(r[1]), bool(r[2]), bool(r[3])) for r in rows]


def _grant_locks(conn: psycopg.Connection[Any]) -> None:
    """Only the writer and the tables' owner may take advisory locks here, when this account may
    say so (see the module's docstring). A REVOKE by an account that may not is no error in
    PostgreSQL, only a warning: hence the check of ownership first."""
    row = conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass('events')").fetchone()
    takers = {Role.WRITER.value, *([str(row[0])] if row else [])}
    for function, may, _writer, _readers in _lock_functions(conn):
        if not may:
            continue
        target = sql.SQL(function)  # a signature the catalog spelled, e.g. pg_advisory_lock(bigint)
        conn.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC").format(target))
        for role in (Role.ANALYST.value, Role.AUDITOR.value):
            conn.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM {}").format(target, sql.Identifier(role)))
        for role in sorted(takers):
            conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(target, sql.Identifier(role)))


def readers_may_lock(conn: psycopg.Connection[Any]) -> bool:
    """Whether the analyst or the auditor may take advisory locks here: an upgrade by an account
    that does not own the lock functions leaves them to PUBLIC. False when the roles are missing."""
    if not roles_exist(conn):
        return False
    found = any(readers for _f, _may, _writer, readers in _lock_functions(conn))
    conn.commit()
    return found


def _refuse_ownership(conn: psycopg.Connection[Any]) -> None:
    """A role that owns an audit table or one of its partitions (`_PARTITION_GRANTS`), or is a
    member of its owner, may ALTER it, DROP it or disable its triggers whatever the grants say."""
    rows = conn.execute(
        "SELECT r.rolname, c.relname FROM pg_class c CROSS JOIN unnest(%(roles)s::text[]) r(rolname) "
        "WHERE (c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(%(names)s) "
        f"OR c.oid IN (SELECT oid FROM ({_UNDER}) p)) "
        "AND pg_has_role(r.rolname, c.relowner, 'MEMBER') ORDER BY 1, 2",
        {"roles": list(ELSPETH_ROLES), "names": list(TABLES), "tables": _tables(conn)},
    ).fetchall()
    if rows:
        role, table = rows[0]
        raise RolesUnavailable(
            f"the role {role} owns the table {table} (or is a member of its owner): it could alter or drop it; "
            "make another role the owner (ALTER TABLE ... OWNER TO), or revoke that membership"
        )


def roles_exist(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (list(ELSPETH_ROLES),)).fetchone()
    conn.commit()
    return bool(row and row[0] == len(ELSPETH_ROLES))


def grants_current(conn: psycopg.Connection[Any]) -> bool:
    """True when the roles exist and hold what `apply_grants` gives them (a cheap check, so the
    embedded server can bring an older data folder up to the rule on start)."""
    if not roles_exist(conn):
        return False
    # (role, table, privilege, wanted, of any column): a privilege a role must not hold is looked
    # for on each column too, as a grant of some columns is not one of the table to
    # has_table_privilege; and PUBLIC (every role, the analyst too) must hold none (apply_grants).
    expected: list[tuple[str, str, str, bool, bool]] = []
    for table in _tables(conn):
        kind = TABLES[table]
        for role in (*ELSPETH_ROLES, "public"):
            granted = PRIVILEGES.get((kind, role), ())
            for privilege in _ALL:
                want = privilege in granted
                if role == Role.WRITER and table in WRITER_WITHHELD and privilege == "INSERT":
                    # of the whole table: its columns, but those withheld (checked below)
                    expected.append((role, table, privilege, False, False))
                    continue
                if role == Role.ANALYST and not want:
                    continue  # extra grants to analysts are the owner's decision
                if role == Role.ANALYST and table in ROW_DATA_COLUMNS:
                    continue  # column grants: checked by apply_grants' own rule
                expected.append((role, table, privilege, want, not want and privilege in _COLUMN_PRIVILEGES))
    # The writer may take its run's lock; the readers may not, where this account could see to it.
    locks = _lock_functions(conn)
    conn.commit()
    if any(not writer or (may and readers) for _f, may, writer, readers in locks):
        return False
    if not expected:
        return True
    row = conn.execute(
        "SELECT bool_and(CASE WHEN c THEN NOT has_any_column_privilege(r, t::regclass, p) "
        "ELSE has_table_privilege(r, t::regclass, p) = w END) "
        "FROM unnest(%s::text[], %s::text[], %s::text[], %s::bool[], %s::bool[]) AS x(r, t, p, w, c)",
        tuple(map(list, zip(*expected, strict=True))),
    ).fetchone()
    conn.commit()
    if not (row and row[0]):
        return False
    if beyond_the_parents(conn):
        return False
    # The writer inserts each column but those withheld (`WRITER_WITHHELD`).
    for table in sorted(set(WRITER_WITHHELD) & set(_tables(conn))):
        row = conn.execute(
            "SELECT bool_and(has_column_privilege(%s, attrelid, attname, 'INSERT') <> (attname = ANY(%s))) "
            "FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (Role.WRITER.value, list(WRITER_WITHHELD[table]), table),
        ).fetchone()
        if not (row and row[0]):
            conn.commit()
            return False
    conn.commit()
    return True


@dataclass(frozen=True)
class RoleInfo:
    name: str
    exists: bool
    can_login: bool
    privileges: list[tuple[str, list[str]]]  # (privileges, tables holding exactly those), in order


def describe(conn: psycopg.Connection[Any]) -> list[RoleInfo]:
    """What each role may do in this database, as PostgreSQL itself reports it."""
    tables = _tables(conn)
    out = []
    for role in ELSPETH_ROLES:
        found = _attributes(conn, role)
        if found is None:
            out.append(RoleInfo(role, False, False, []))
            continue
        groups: dict[str, list[str]] = {}
        for table in tables:
            held = []
            for p in _ALL:
                if _has(conn, role, table, p):
                    held.append(p)
                elif p in _COLUMN_PRIVILEGES and (columns := _on_columns(conn, role, table, p)):
                    held.append(columns)
            groups.setdefault(" ".join(held) or "none", []).append(table)
        conn.commit()
        out.append(RoleInfo(role, True, found["rolcanlogin"], list(groups.items())))
    return out


def _on_columns(conn: psycopg.Connection[Any], role: str, table: str, privilege: str) -> str | None:
    """`privilege` as `role` holds it on some columns of `table` (not on the table), as PostgreSQL
    reports it column by column, or None if on none: the rule's columns are not assumed, since
    an owner's grant (or one an upgrade has yet to take back) may hold others."""
    rows = conn.execute(
        "SELECT attname, has_column_privilege(%s, attrelid, attname, %s) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (role, privilege, table),
    ).fetchall()
    held = [r[0] for r in rows if r[1]]
    missing = [r[0] for r in rows if not r[1]]
    if not held:
        return None
    if not missing:  # every column, one grant each
        return privilege
    return (
        f"{privilege} (not {', '.join(missing)})"
        if len(missing) <= len(held)
        else f"{privilege} (only {', '.join(held)})"
    )


def _has(conn: psycopg.Connection[Any], role: str, table: str, privilege: str) -> bool:
    row = conn.execute("SELECT has_table_privilege(%s, %s::regclass, %s)", (role, table, privilege)).fetchone()
    return bool(row and row[0])


def set_password(conn: psycopg.Connection[Any], role: str, password: str) -> None:
    """Let `role` log in with `password`. Only its SCRAM verifier, computed here, is sent: the
    password itself never reaches the server (nor its statement log). Commits."""
    if role not in ELSPETH_ROLES:
        raise RolesUnavailable(f"unknown role {role!r}: one of {', '.join(ELSPETH_ROLES)}")
    if _attributes(conn, role) is None:
        raise RolesUnavailable(f"the role {role} does not exist yet: run `elspeth db upgrade` first")
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
    try:
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))
        conn.commit()
    except psycopg.Error as e:
        conn.rollback()
        raise RolesUnavailable(f"cannot set the password of {role}: {first_line(e)}") from e


def may_become(conn: psycopg.Connection[Any], role: str) -> bool:
    """Whether the connected user may `SET ROLE` to `role` (False when the role is missing)."""
    option = "SET" if conn.info.server_version >= 160000 else "MEMBER"
    row = conn.execute(
        "SELECT coalesce(bool_or(pg_has_role(current_user, oid, %s)), false) FROM pg_roles WHERE rolname = %s",
        (option, role),
    ).fetchone()
    conn.commit()
    return bool(row and row[0])
