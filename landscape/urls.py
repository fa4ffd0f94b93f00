"""Secrets inside connection strings, found by parsing them: database URLs
(`scheme://user:password@host/db?sslpassword=...`) and libpq keyword strings
(`host=h password='p w'`). One function hides them all, for the settings recorded with a run
(as fingerprints) and for every message that shows a URL (as ***).

A password that is not percent-encoded makes a URL ambiguous: libpq ends the user part at the
first `@` or `/`, SQLAlchemy at the first `@` after the first `:`, urllib at the last `@`
before the first `/ ? #`, and the person who wrote it usually meant the last `@` of all. Each
reading's password starts after the first `:` of the user part and ends at one of those `@`s,
so the union of all readings — what is hidden — runs from that `:` to the last `@`. A URL
whose query holds an `@` loses its host from the display then; that is the price of never
showing a password under any reading.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

# A settings key or URL parameter holds a secret when one of its words says so; `key` and
# `token` only as the last word (`api_key`, `auth_token`, but not `key_field`), and a few
# names that only look like secrets (`data_key` names a field of the json source) are not.
_SECRET_WORDS = frozenset({"password", "passwd", "pwd", "secret", "secrets", "credential", "credentials", "apikey"})
_SECRET_SUFFIXES = ("password", "passwd", "secret")  # sslpassword, clientsecret
_SECRET_LAST_WORDS = frozenset({"key", "token"})
_NOT_SECRET = frozenset({"data_key", "sort_key", "group_key", "partition_key", "primary_key"})
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


def is_secret_name(name: str) -> bool:
    """Whether a key (of the settings, a URL query or a libpq string) names a secret."""
    lowered = _CAMEL.sub(r"\1_\2", name).lower()  # apiKey -> api_key
    if lowered in _NOT_SECRET:
        return False
    words = [w for w in _WORD_SPLIT.split(lowered) if w]
    if not words:
        return False
    return (
        bool(_SECRET_WORDS.intersection(words))
        or words[-1] in _SECRET_LAST_WORDS
        or any(w.endswith(_SECRET_SUFFIXES) for w in words)
    )


def _stars(_secret: str) -> str:
    return "***"


def redact(text: str, hide: Callable[[str], str] = _stars) -> str:
    """`text` with every secret of a connection string in it replaced by `hide(secret)`
    (*** by default). Text that is neither a URL nor a libpq keyword string is returned as is."""
    spans = _url_secrets(text) if _scheme_end(text) else _conninfo_secrets(text)
    out, at = [], 0
    for start, end, secret in spans:
        out.append(text[at:start])
        out.append(hide(secret))
        at = end
    out.append(text[at:])
    return "".join(out)


def scrub(message: str, connection: str) -> str:
    """A driver's message about `connection` with its secrets removed: each secret the parser
    finds in `connection`, and each piece a driver reading it otherwise may have cut it into
    (at `@ / ? # :`, e.g. a password's tail taken for the host name), becomes ***. Pieces of
    fewer than 3 characters are left: hiding every such letter would garble the message."""
    spans = _url_secrets(connection) if _scheme_end(connection) else _conninfo_secrets(connection)
    pieces: set[str] = set()
    for start, end, secret in spans:
        for text in (secret, connection[start:end]):
            pieces.add(text)
            pieces.update(_pieces(text))
    for piece in sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True):
        message = message.replace(piece, "***")
    return redact(message)


def _pieces(text: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    for c in text:
        if c in "@/?#:":
            out.append("".join(current))
            current = []
        else:
            current.append(c)
    out.append("".join(current))
    return out


def _scheme_end(text: str) -> int:
    """Where the part after `scheme://` begins, or 0 when text is not a URL."""
    scheme, sep, _ = text.partition("://")
    if not sep or not scheme or not scheme[0].isalpha():
        return 0
    if not all(c.isalnum() or c in "+-." for c in scheme):
        return 0
    return len(scheme) + 3


Span = tuple[int, int, str]  # start, end, the secret's value (percent- or backslash-decoded)


def _url_secrets(text: str) -> list[Span]:
    start = _scheme_end(text)
    rest = text[start:]
    spans: list[Span] = []
    last_at = rest.rfind("@")  # see the module docstring: the end of the widest reading
    colon = rest.find(":", 0, max(last_at, 0))
    host_from = 0
    if last_at >= 0:
        host_from = last_at + 1
        if colon >= 0:
            raw = rest[colon + 1 : last_at]
            spans.append((start + colon + 1, start + last_at, unquote(raw)))
    # Query parameters after the host: `?k=v&k=v`, up to a fragment.
    query_at = rest.find("?", host_from)
    if query_at < 0:
        return spans
    end = rest.find("#", query_at)
    end = len(rest) if end < 0 else end
    pos = query_at + 1
    while pos <= end:
        amp = rest.find("&", pos, end)
        stop = end if amp < 0 else amp
        key, eq, value = rest[pos:stop].partition("=")
        if eq and is_secret_name(unquote(key)):
            value_at = start + pos + len(key) + 1
            spans.append((value_at, start + stop, unquote(value)))
        pos = stop + 1
    return spans


def _conninfo_secrets(text: str) -> list[Span]:
    """The secret values of a libpq keyword string (see `_conninfo_pairs`)."""
    return [(start, end, value) for key, start, end, value in _conninfo_pairs(text)[0] if is_secret_name(key)]


def _conninfo_pairs(text: str) -> tuple[list[tuple[str, int, int, str]], bool]:
    """A libpq keyword string read as libpq reads one: `key = value` pairs separated by spaces,
    a value either single-quoted (with backslash escapes) or a run of non-space characters.
    Returns (key, value start, value end, value) for each pair, and whether the whole text was
    one; text that stops being one is left alone from there on (its secrets found before that
    point are still hidden)."""
    pairs: list[tuple[str, int, int, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return pairs, bool(pairs)
        key_at = i
        while i < n and not text[i].isspace() and text[i] != "=":
            i += 1
        key = text[key_at:i]
        if not key.isidentifier():
            return pairs, False  # not a keyword string (an expression, a sentence, a path)
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=":
            return pairs, False
        i += 1
        while i < n and text[i].isspace():
            i += 1
        quoted = i < n and text[i] == "'"
        if quoted:
            i += 1
        value_at, chars = i, []
        while i < n and (text[i] != "'" if quoted else not text[i].isspace()):
            if text[i] == "\\" and i + 1 < n:
                i += 1
            chars.append(text[i])
            i += 1
        pairs.append((key, value_at, i, "".join(chars)))
        if quoted:
            if i >= n:
                return pairs, False  # an unterminated quote
            i += 1  # the closing quote


# -- which database a connection string names ---------------------------------------------------

_DEFAULT_SOCKET_DIRS = ("/run/postgresql", "/var/run/postgresql", "/tmp")  # libpq's usual build defaults


@dataclass(frozen=True)
class Endpoint:
    """Where a server listens: a unix socket folder (resolved) or a TCP host, and the port."""

    unix: bool
    place: str
    port: int


@dataclass(frozen=True)
class DatabaseName:
    """A PostgreSQL database as a connection string names it: the endpoints it may try, and
    the database name (libpq's defaults filled in)."""

    endpoints: frozenset[Endpoint]
    dbname: str

    def same_as(self, other: DatabaseName) -> bool:
        """Whether both may be one database. Erring towards yes: a TCP connection to this
        machine and a unix socket on the same port are taken to reach one server."""
        if self.dbname != other.dbname:
            return False
        for a in self.endpoints:
            for b in other.endpoints:
                if a.port != b.port:
                    continue
                if a == b or (a.unix != b.unix and "loopback" in (a.place, b.place)):
                    return True
        return False


def database_name(url: str, environ: Mapping[str, str] | None = None) -> DatabaseName | None:
    """The PostgreSQL database a URL (libpq, or SQLAlchemy's `postgresql+driver://`) or libpq
    keyword string names; None when it names no PostgreSQL database or cannot be read, or
    names a libpq service (`service=`, or PGSERVICE) that no service file here defines."""
    env = os.environ if environ is None else environ
    params = _connection_params(url)
    if params is None:
        return None
    service = params.get("service") or env.get("PGSERVICE")
    if service:
        defined = service_params(service, env)
        if defined is None:
            return None  # libpq may know a file this does not (its compiled-in folder): unknown
        # As libpq does: what the connection string gives wins over the service's definition
        # (an empty value, as `postgresql:///` gives for the database, gives nothing).
        params = {**defined, **{k: v for k, v in params.items() if v}}
    hosts = (params.get("hostaddr") or params.get("host") or env.get("PGHOST") or "").split(",")
    ports = (params.get("port") or env.get("PGPORT") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    endpoints: set[Endpoint] = set()
    for host, port_text in zip(hosts, ports, strict=False):
        try:
            port = int(port_text.strip() or "5432")
        except ValueError:
            return None
        endpoints.update(_endpoints(host.strip(), port))
    user = params.get("user") or env.get("PGUSER") or getpass.getuser()
    return DatabaseName(frozenset(endpoints), params.get("dbname") or env.get("PGDATABASE") or user)


def service_params(service: str, environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The keywords a libpq service file gives `service`, from the files libpq reads in its
    order (PGSERVICEFILE, else ~/.pg_service.conf; then PGSYSCONFDIR/pg_service.conf); None when
    none of them defines it. Unreadable files count as not defining it."""
    env = os.environ if environ is None else environ
    files = [env.get("PGSERVICEFILE") or os.path.join(os.path.expanduser("~"), ".pg_service.conf")]
    if env.get("PGSYSCONFDIR"):
        files.append(os.path.join(env["PGSYSCONFDIR"], "pg_service.conf"))
    for name in files:
        try:
            with open(name, encoding="utf-8", errors="replace") as f:
                text = f.read(1_000_000)
        except (OSError, ValueError):
            continue
        found = _service_section(text, service)
        if found is not None:
            return found
    return None


def _service_section(text: str, service: str) -> dict[str, str] | None:
    """The `key=value` lines of the `[service]` section of a service file's text, or None."""
    section: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if section is not None:
                return section  # the first section of that name is the one libpq uses
            if line.endswith("]") and line[1:-1] == service:
                section = {}
            continue
        if section is not None:
            key, eq, value = line.partition("=")
            if eq:
                section.setdefault(key.strip(), value.strip())
    return section


def _connection_params(url: str) -> dict[str, str] | None:
    scheme = url.partition("://")[0].lower() if _scheme_end(url) else ""
    if scheme:
        if not (scheme in ("postgresql", "postgres") or scheme.startswith(("postgresql+", "postgres+"))):
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:  # SQLAlchemy's reading: what a database sink connects with
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            return None
        params = {k: v if isinstance(v, str) else ",".join(v) for k, v in parsed.query.items()}
        for key, value in (("host", parsed.host), ("port", parsed.port), ("dbname", parsed.database),
                           ("user", parsed.username)):  # fmt: skip
            if value is not None and key not in params:
                params[key] = str(value)
        return params
    pairs, whole = _conninfo_pairs(url)
    return {key: value for key, _, _, value in pairs} if whole else None


def _endpoints(host: str, port: int) -> set[Endpoint]:
    if not host:
        return {Endpoint(True, os.path.realpath(d), port) for d in _DEFAULT_SOCKET_DIRS}
    if host.startswith("/"):
        return {Endpoint(True, os.path.realpath(host), port)}
    name = host.strip("[]").rstrip(".").lower()
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        local = {"localhost", socket.gethostname().lower()}  # no DNS: validate must not wait on it
        return {Endpoint(False, "loopback" if name in local or name.endswith(".localhost") else name, port)}
    if address.is_loopback or address.is_unspecified:
        return {Endpoint(False, "loopback", port)}
    return {Endpoint(False, address.compressed, port)}
