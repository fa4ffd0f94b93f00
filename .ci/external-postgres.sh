# shellcheck shell=bash
# Sourced by .ci/run: a real PostgreSQL server (Debian's postgresql-15) on loopback, in a temp
# folder, run as an unprivileged user with password (SCRAM) authentication only, so the tests
# can also run against a server that is not ELSPETH's embedded one. After `start_external_postgres`,
# ELSPETH_CI_PG_URL names a maintenance database as a superuser-less owner role; call
# `stop_external_postgres` (the caller's EXIT trap does) to stop the server and remove the folder.

PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CI_TMP=""

start_external_postgres() {
  if [ ! -x "$PG_BIN/pg_ctl" ]; then
    echo "== installing postgresql-$PG_MAJOR"
    if [ "$(id -u)" -ne 0 ]; then
      echo "postgresql-$PG_MAJOR is missing and this is not root: install it (apt-get install postgresql-$PG_MAJOR)" >&2
      return 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "postgresql-$PG_MAJOR" >/dev/null
  fi
  # PostgreSQL refuses to run as root: as root, run it as the package's own system user.
  local run_as=()
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    run_as=(runuser -u postgres --)
  fi
  PG_CI_TMP=$(mktemp -d /tmp/elspeth-ci-pg.XXXXXX)
  chmod 0755 "$PG_CI_TMP"
  local superpw ownerpw port
  superpw=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  ownerpw=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -m 0700 "$PG_CI_TMP/data" "$PG_CI_TMP/socket"
  printf '%s\n' "$superpw" >"$PG_CI_TMP/superpw"
  chmod 0600 "$PG_CI_TMP/superpw"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$PG_CI_TMP"; fi
  "${run_as[@]}" "$PG_BIN/initdb" -D "$PG_CI_TMP/data" -U postgres --pwfile="$PG_CI_TMP/superpw" \
    --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >"$PG_CI_TMP/initdb.log"
  rm -f "$PG_CI_TMP/superpw"
  # Loopback TCP with SCRAM only; the socket folder is the server user's alone.
  cat >"$PG_CI_TMP/data/pg_hba.conf" <<HBA
host all all 127.0.0.1/32 scram-sha-256
local all all scram-sha-256
HBA
  "${run_as[@]}" "$PG_BIN/pg_ctl" -D "$PG_CI_TMP/data" -l "$PG_CI_TMP/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_CI_TMP/socket -c max_connections=200 -c fsync=on" start >/dev/null
  # The tests' owner: no superuser; CREATEDB for a database per test module (tests/conftest.py),
  # CREATEROLE for `migrate`, which makes the ELSPETH roles once per server. The tamper tests turn
  # the triggers off as a superuser would (session_replication_role); as the tables' owner this
  # role could do as much with ALTER TABLE ... DISABLE TRIGGER, so granting the parameter gives
  # it no power it lacked. pg_signal_backend: the per-module `DROP DATABASE ... WITH (FORCE)` must
  # also end an autovacuum worker busy in that database, whose process has no role a non-superuser
  # could be a member of (seen: "must be a member of the role whose process is being terminated").
  # The ELSPETH roles are made here so that the owner can be a member of
  # them (as an administrator of a managed server would set it up): its connections then act as
  # each role (SET ROLE), and the access tests test the roles, not the owner. `migrate` finds them,
  # checks them and grants them their tables.
  PGPASSWORD=$superpw "$PG_BIN/psql" -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "CREATE ROLE elspeth_ci LOGIN CREATEDB CREATEROLE NOSUPERUSER PASSWORD '$ownerpw'" \
    -c "GRANT SET ON PARAMETER session_replication_role TO elspeth_ci" \
    -c "GRANT pg_signal_backend TO elspeth_ci" \
    -c "CREATE ROLE elspeth_writer NOLOGIN" -c "CREATE ROLE elspeth_analyst NOLOGIN" \
    -c "CREATE ROLE elspeth_auditor NOLOGIN" \
    -c "GRANT elspeth_writer, elspeth_analyst, elspeth_auditor TO elspeth_ci" >/dev/null
  ELSPETH_CI_PG_URL="postgresql://elspeth_ci:$ownerpw@127.0.0.1:$port/postgres"
  export ELSPETH_CI_PG_URL
}

stop_external_postgres() {
  if [ -n "$PG_CI_TMP" ] && [ -d "$PG_CI_TMP/data" ]; then
    local run_as=()
    if [ "$(id -u)" -eq 0 ]; then run_as=(runuser -u postgres --); fi
    "${run_as[@]}" "$PG_BIN/pg_ctl" -D "$PG_CI_TMP/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_CI_TMP"
  fi
  PG_CI_TMP=""
}
