"""The engine's errors. The CLI turns each into one line and an exit status."""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engine's errors."""


class ResumeRefused(EngineError):
    """A run that cannot be resumed (completed, still being written, input changed, ...)."""


class RunRefused(EngineError):
    """A new run that may not start (it would spoil another run's file); nothing was recorded."""


class RunFailedError(EngineError):
    # What a resume that failed says besides (`Outcome.notes`: `Execution.cut_and_lost`); on the
    # class, for `RunStopped`, which takes no part of this `__init__`.
    notes: tuple[str, ...] = ()

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(f"run {run_id} failed: {reason}")
        self.run_id = run_id
        self.reason = reason


class RunStopped(RunFailedError):
    """The audit store or the witness file failed in the middle of a run: nothing could be
    recorded of it, but the log ends at its last durability point, which a resume continues from."""

    def __init__(self, run_id: str, reason: str) -> None:
        EngineError.__init__(
            self, f"run {run_id} stopped: {reason}; its log ends at its last durability point, where a resume continues"
        )
        self.run_id = run_id
        self.reason = reason
