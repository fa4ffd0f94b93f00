"""The names of the roles ELSPETH's users act as (landscape/roles.py says what each may do).

Apart from `roles`, so that the CLI can name them without loading the database driver."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    OWNER = "owner"  # not a PostgreSQL role: whoever the URL names (the embedded superuser)
    WRITER = "elspeth_writer"
    ANALYST = "elspeth_analyst"
    AUDITOR = "elspeth_auditor"


ELSPETH_ROLES: tuple[str, ...] = (Role.WRITER.value, Role.ANALYST.value, Role.AUDITOR.value)
