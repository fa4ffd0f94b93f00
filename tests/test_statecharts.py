"""The compiled tables and the `transitions` machines are the same machines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statecharts.compiled import COMPILED, EVENT_MACHINE, InvalidTransition
from statecharts.machines import INITIAL, MACHINES, TokenState
from statecharts.mermaid import render_all
from statecharts.reference import ReferenceModel

ROOT = Path(__file__).resolve().parent.parent


def _triggers(name: str) -> list[str]:
    return sorted({t.trigger for t in MACHINES[name].transitions} | {"bogus"})


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_compiled_table_accepts_and_rejects_exactly_what_transitions_does(name: str) -> None:
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(_triggers(name)), max_size=12))
    def check(sequence: list[str]) -> None:
        ref = ReferenceModel(MACHINES[name])
        state = INITIAL
        compiled = COMPILED[name]
        for trigger in sequence:
            try:
                expected: str | None = ref.fire(trigger)
            except InvalidTransition:
                expected = None
            try:
                state_after, _event = compiled.fire(state, trigger)
                got: str | None = state_after
            except InvalidTransition:
                got = None
            assert got == expected, (name, sequence, trigger)
            if got is None:
                return
            state = got

    check()


def test_each_event_type_belongs_to_exactly_one_transition_of_one_machine() -> None:
    seen: dict[str, str] = {}
    for m in MACHINES.values():
        triggers_by_event: dict[str, set[str]] = {}
        for t in m.transitions:
            triggers_by_event.setdefault(t.event.__name__, set()).add(t.trigger)
            assert seen.setdefault(t.event.__name__, m.name) == m.name
        assert all(len(v) == 1 for v in triggers_by_event.values()), triggers_by_event
    assert seen == EVENT_MACHINE


def test_terminal_states_have_no_way_out() -> None:
    for name, compiled in COMPILED.items():
        for state, _trigger in compiled.by_trigger:
            assert state not in compiled.terminal, (name, state)


def test_a_token_reaches_one_terminal_outcome_and_then_nothing() -> None:
    token = COMPILED["token"]
    state, _ = token.fire(INITIAL, "create")
    state, _ = token.fire(state, "step")
    state, event = token.fire(state, "assign_sink")
    state, event = token.fire(state, "complete")
    assert state == TokenState.COMPLETED and event == "TokenCompleted"
    with pytest.raises(InvalidTransition):
        token.fire(state, "fail")


def test_diagrams_show_every_state() -> None:
    diagrams = render_all()
    assert set(diagrams) == {"run.mmd", "token.mmd", "coalesce.mmd", "batch.mmd"}
    for name, m in MACHINES.items():
        for state in m.states:
            assert f" {state}" in diagrams[f"{name}.mmd"], (name, state)
    for needed in ("interrupted", "coalesced", "quarantined", "consumed_in_batch"):
        assert any(needed in text for text in diagrams.values())


def test_committed_diagrams_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli.main", "statecharts", "--check"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
