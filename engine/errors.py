"""The engine's errors. The CLI turns each into one line and an exit status."""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engine's errors."""


class ResumeRefused(EngineError):
    """A run that cannot be resumed (completed, still being written, input changed, ...)."""


class RunRefused(EngineError):
    """A new run that may not start (it would spoil another run's file); nothing was recorded."""


class RunFailedError(EngineError):
    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(f"run {run_id} failed: {reason}")
        self.run_id = run_id
        self.reason = reason
