"""The statecharts' errors: one root, so a caller can tell ours from anything else."""

from __future__ import annotations


class StatechartError(Exception):
    """Base of every error raised by `statecharts`."""


class InvalidTransition(StatechartError):
    """A trigger (or a recorded event) that the machine does not allow from its state."""

    def __init__(self, machine: str, state: str, what: str) -> None:
        super().__init__(f"{machine}: '{what}' is not allowed in state '{state}'")
        self.machine = machine
        self.state = state
        self.what = what


class UnknownSchemaVersion(StatechartError):
    """A stored event of a type or version this ELSPETH cannot read."""

    def __init__(self, event_type: str, version: int) -> None:
        # Versions count from 1: below that, no ELSPETH wrote it, newer or not.
        why = "it was written by a newer version: upgrade ELSPETH" if version >= 1 else "versions count from 1"
        super().__init__(f"event {event_type} has schema_version {version}, which this ELSPETH cannot read ({why})")
