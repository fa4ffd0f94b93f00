"""The compiled tables and the `transitions` machines are the same machines.

The reference's behaviour is read off fresh `transitions` models: `_reference_edges` fires every
known trigger from every state. From it come the legal moves the property test mostly draws (so
long walks reach deep and terminal states), and the exact edge sets the compiled tables must have.
"""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from statecharts import events as ev
from statecharts.compiled import COMPILED, EVENT_MACHINE, InvalidTransition
from statecharts.machines import INITIAL, MACHINES, TokenState
from statecharts.mermaid import render_all
from statecharts.reference import ReferenceModel

ROOT = Path(__file__).resolve().parent.parent
MACHINE_NAMES = sorted(MACHINES)

# Every trigger of every machine (another machine's trigger must be rejected too) and one nobody has.
ALL_TRIGGERS: tuple[str, ...] = tuple(sorted({t.trigger for m in MACHINES.values() for t in m.transitions} | {"bogus"}))
# Every event type the store can hold, and one that does not exist.
ALL_EVENTS: tuple[str, ...] = (*sorted(ev.EVENT_TYPES), "NoSuchEvent")

Edge = tuple[str, str, str]  # (state, trigger, next state)


def _states(name: str) -> tuple[str, ...]:
    return (INITIAL, *MACHINES[name].states)


def _reference_fire(name: str, state: str, trigger: str) -> str | None:
    """The state a fresh `transitions` model in `state` moves to on `trigger`; None if it refuses."""
    try:
        return ReferenceModel(MACHINES[name], initial=state).fire(trigger)
    except InvalidTransition:
        return None


@cache
def _reference_edges(name: str) -> dict[tuple[str, str], str]:
    """(state, trigger) -> next state, for everything the reference machine accepts."""
    edges: dict[tuple[str, str], str] = {}
    for state in _states(name):
        for trigger in ALL_TRIGGERS:
            after = _reference_fire(name, state, trigger)
            if after is not None:
                edges[(state, trigger)] = after
    return edges


@cache
def _legal(name: str) -> dict[str, tuple[str, ...]]:
    """The triggers the reference machine accepts in each state (empty for terminal states)."""
    edges = _reference_edges(name)
    return {s: tuple(sorted(t for (src, t) in edges if src == s)) for s in _states(name)}


def _trigger_of_event(name: str) -> dict[str, str]:
    """Event type name -> the trigger whose transition emits it, per the machine definition."""
    return {t.event.__name__: t.trigger for t in MACHINES[name].transitions}


def _event_of_trigger(name: str) -> dict[str, str]:
    return {t.trigger: t.event.__name__ for t in MACHINES[name].transitions}


def _bfs(edges: Mapping[tuple[str, str], str]) -> tuple[dict[str, tuple[str, ...]], set[Edge]]:
    """Shortest trigger path from INITIAL to each reachable state, and every edge leaving one."""
    paths: dict[str, tuple[str, ...]] = {INITIAL: ()}
    reached: set[Edge] = set()
    queue = deque([INITIAL])
    while queue:
        state = queue.popleft()
        for (src, trigger), after in sorted(edges.items()):
            if src != state:
                continue
            reached.add((src, trigger, after))
            if after not in paths:
                paths[after] = (*paths[state], trigger)
                queue.append(after)
    return paths, reached


def _compiled_edges(name: str) -> dict[tuple[str, str], str]:
    return {key: after for key, (after, _event) in COMPILED[name].by_trigger.items()}


def _compiled_fire(name: str, state: str, trigger: str) -> tuple[str, str] | None:
    """(next state, event type name) from the compiled by_trigger table; None if it refuses."""
    try:
        return COMPILED[name].fire(state, trigger)
    except InvalidTransition:
        return None


def _compiled_apply(name: str, state: str, event_name: str) -> str | None:
    """Next state from the compiled by_event table (what the fold uses); None if it refuses."""
    try:
        return COMPILED[name].apply(state, event_name)
    except InvalidTransition:
        return None


# -- reachability and exact edge sets (deterministic) -------------------------------------------


@pytest.mark.parametrize("name", MACHINE_NAMES)
def test_every_state_is_reachable_in_the_reference_machine(name: str) -> None:
    paths, _ = _bfs(_reference_edges(name))
    assert set(paths) == set(_states(name))
    # Replaying each shortest path on one live model lands where the BFS says it does.
    for state, path in paths.items():
        ref = ReferenceModel(MACHINES[name])
        for trigger in path:
            ref.fire(trigger)
        assert ref.state == state, (name, path)


@pytest.mark.parametrize("name", MACHINE_NAMES)
def test_terminal_states_are_exactly_the_reference_states_with_no_way_out(name: str) -> None:
    dead_ends = {s for s, triggers in _legal(name).items() if not triggers}
    assert dead_ends == MACHINES[name].terminal == COMPILED[name].terminal


@pytest.mark.parametrize("name", MACHINE_NAMES)
def test_compiled_by_trigger_has_exactly_the_reference_edges(name: str) -> None:
    ref_paths, ref_reached = _bfs(_reference_edges(name))
    got_paths, got_reached = _bfs(_compiled_edges(name))
    assert got_paths.keys() == ref_paths.keys()
    assert got_reached == ref_reached
    # Also the entries no walk from INITIAL reaches (there should be none): the whole table.
    assert _compiled_edges(name) == _reference_edges(name)
    # Each edge emits the event its transition names.
    emits = _event_of_trigger(name)
    for (_state, trigger), (_after, event_name) in COMPILED[name].by_trigger.items():
        assert event_name == emits[trigger], (name, trigger)


@pytest.mark.parametrize("name", MACHINE_NAMES)
def test_compiled_by_event_agrees_with_firing_the_emitting_trigger_in_the_reference(name: str) -> None:
    trigger_of = _trigger_of_event(name)
    accepted: dict[tuple[str, str], str] = {}
    for state in _states(name):
        for event_name in ALL_EVENTS:
            trigger = trigger_of.get(event_name)  # None: another machine's event, or no event at all
            expected = None if trigger is None else _reference_fire(name, state, trigger)
            got = _compiled_apply(name, state, event_name)
            assert got == expected, (name, state, event_name, trigger)
            if got is not None:
                accepted[(state, event_name)] = got
    assert accepted == COMPILED[name].by_event  # and the table holds nothing else


# -- walks: every edge by construction, then random wandering (hypothesis) -----------------------


def _step(name: str, ref: ReferenceModel, state: str, trigger: str) -> str:
    """Fire `trigger` on the reference model and in the compiled tables from `state`; check they
    agree (next state, event emitted, the fold's by_event table) and return the state after it."""
    emits = _event_of_trigger(name)
    where = (name, state, trigger)
    try:
        expected: str | None = ref.fire(trigger)
    except InvalidTransition:
        expected = None
    fired = _compiled_fire(name, state, trigger)
    assert (None if fired is None else fired[0]) == expected, where
    if fired is None:
        assert ref.state == state, where  # a refused trigger leaves the reference in place
        if trigger in emits:  # and the fold must refuse that transition's event here too
            assert _compiled_apply(name, state, emits[trigger]) is None, where
        return state
    after, event_name = fired
    assert event_name == emits[trigger], where
    assert _compiled_apply(name, state, event_name) == after, where
    assert ref.state == after, where
    return after


@pytest.mark.parametrize("name", MACHINE_NAMES)
def test_a_walk_along_every_edge_agrees_step_by_step(name: str) -> None:
    # Deterministic coverage: one live walk per edge of the reference (the shortest path to its
    # source, then its trigger), then every trigger there is, refused or not, from where it lands.
    # Random walks alone missed rarely-drawn states now and then; this reaches all by construction.
    paths, _ = _bfs(_reference_edges(name))
    visited: set[str] = {INITIAL}
    walked: set[Edge] = set()
    for source, trigger in sorted(_reference_edges(name)):
        ref = ReferenceModel(MACHINES[name])
        state = INITIAL
        for step in (*paths[source], trigger):
            before, state = state, _step(name, ref, state, step)
            walked.add((before, step, state))
            visited.add(state)
        for probe in ALL_TRIGGERS:  # from the landing state, on fresh models: refusals included
            probe_ref = ReferenceModel(MACHINES[name], initial=state)
            _step(name, probe_ref, state, probe)
    assert visited == set(_states(name))
    assert MACHINES[name].terminal <= visited
    assert {(s, t) for (s, t, _after) in walked} == set(_reference_edges(name))


@pytest.mark.parametrize("name", MACHINE_NAMES)
def test_compiled_tables_follow_the_reference_on_random_walks(name: str) -> None:
    # Long walks that a fixed list of paths would not try: aim at one edge first (so deep and
    # terminal states start many walks), then wander, mostly by a trigger legal where the walk is,
    # otherwise by any trigger (mostly this machine's own, the likely mistakes). Only agreement is
    # asserted here; coverage is the deterministic test's job, so no run can fail by bad luck.
    legal = _legal(name)
    paths, _ = _bfs(_reference_edges(name))
    goals = sorted(_reference_edges(name))
    own_triggers = (*sorted(_event_of_trigger(name)), "bogus")

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        source, goal_trigger = data.draw(st.sampled_from(goals), label="goal")
        aim = (*paths[source], goal_trigger)
        wander = data.draw(st.integers(min_value=0, max_value=12), label="wander")
        ref = ReferenceModel(MACHINES[name])
        state = INITIAL
        for step in range(len(aim) + wander):
            if step < len(aim):
                trigger = aim[step]
            elif legal[state] and data.draw(st.integers(min_value=0, max_value=4)) > 0:
                trigger = data.draw(st.sampled_from(legal[state]))
            else:
                trigger = data.draw(st.sampled_from(own_triggers) | st.sampled_from(ALL_TRIGGERS))
            state = _step(name, ref, state, trigger)
        event(f"ended in {state}")

    check()


# -- the rest ----------------------------------------------------------------------------------


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
