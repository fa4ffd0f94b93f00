"""coalesces.trigger and coalesces.collisions: what decided a coalesce, and which fields a merge
took from one branch over another's different value.

Revision ID: 0015
Revises: 0014

Why: both were only in the events (`CoalesceMerged.trigger` and `.collisions`,
`CoalesceFailed.trigger`), which an analyst's SQL cannot read without decoding bodies. A union
merge whose branches disagree on a field keeps the last branch's value: which rows lost a value
that way is an audit question, and now a `WHERE collisions <> '{}'`.

`trigger` is `arrivals` (what arrived or was lost decided it), `timeout` or `end_of_source`; NULL
while the coalesce waits. `collisions` is a text array, not a comma-joined text like `arrived`:
field names are row data and may hold a comma. NULL unless the coalesce merged.

Rows projected before this revision are filled from their own terminal event, read as the
projection reads bodies (an escaped NUL, which PostgreSQL's JSON cannot hold, as U+FFFD), so a
comparison with a rebuild (`replay --check`) finds them equal.
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# Spelled out here, as the projection spells it (landscape/projection_sql.py, `_SANITIZED`): a
# revision must do what it did when it was written, whatever the code says later.
_BODY = (
    r"CASE WHEN strpos(t, E'\\u0000') = 0 THEN t "
    r"ELSE regexp_replace(t, E'(?<!\\\\)((?:\\\\\\\\)*)\\\\u0000', E'\\1\\\\ufffd', 'g') END"
)


# Each coalesce row from its terminal event (a test runs this against a rebuild).
FILL = (
    "UPDATE coalesces c SET trigger = coalesce(e.body ->> 'trigger', 'arrivals'), "
    "collisions = CASE WHEN e.event_type = 'CoalesceMerged' "
    "  THEN ARRAY(SELECT json_array_elements_text(coalesce(e.body -> 'collisions', '[]'))) END "
    f"FROM (SELECT run_id, entity_id, event_type, ({_BODY})::json AS body FROM ("
    "  SELECT run_id, entity_id, event_type, convert_from(payload, 'UTF8') AS t FROM events "
    "  WHERE event_type IN ('CoalesceMerged', 'CoalesceFailed') OFFSET 0) b) e "
    "WHERE e.run_id = c.run_id AND e.entity_id = c.coalesce_id"
)


def upgrade() -> None:
    op.execute("ALTER TABLE coalesces ADD COLUMN trigger text, ADD COLUMN collisions text[]")
    op.execute(FILL)


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
