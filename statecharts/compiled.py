"""Machine definitions compiled into flat lookup tables for hot paths and the replay fold.

A `transitions` model costs ~8 KB and ~9 µs per transition; a million tokens would not fit. The
engine and the fold instead look up `(state, trigger)` or `(state, event type)` in a dict.
`tests/test_statecharts.py` proves these tables and the `transitions` machines agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from statecharts.errors import InvalidTransition as InvalidTransition
from statecharts.machines import MACHINES, MachineDef


@dataclass(frozen=True, slots=True)
class CompiledMachine:
    name: str
    terminal: frozenset[str]
    # (state, trigger) -> (next state, event type name)
    by_trigger: dict[tuple[str, str], tuple[str, str]]
    # (state, event type name) -> next state; each event type belongs to exactly one transition
    by_event: dict[tuple[str, str], str]

    def fire(self, state: str, trigger: str) -> tuple[str, str]:
        try:
            return self.by_trigger[(state, trigger)]
        except KeyError:
            raise InvalidTransition(self.name, state, trigger) from None

    def apply(self, state: str, event_type: str) -> str:
        try:
            return self.by_event[(state, event_type)]
        except KeyError:
            raise InvalidTransition(self.name, state, event_type) from None


def compile_machine(machine: MachineDef) -> CompiledMachine:
    by_trigger: dict[tuple[str, str], tuple[str, str]] = {}
    by_event: dict[tuple[str, str], str] = {}
    for t in machine.transitions:
        for source in t.sources:
            dest = source if t.dest is None else t.dest
            by_trigger[(source, t.trigger)] = (dest, t.event.__name__)
            by_event[(source, t.event.__name__)] = dest
    return CompiledMachine(machine.name, machine.terminal, by_trigger, by_event)


COMPILED: dict[str, CompiledMachine] = {name: compile_machine(m) for name, m in MACHINES.items()}
RUN = COMPILED["run"]
TOKEN = COMPILED["token"]
COALESCE = COMPILED["coalesce"]
BATCH = COMPILED["batch"]

# Which machine an event type moves: the store records it, the fold dispatches on it.
EVENT_MACHINE: dict[str, str] = {t.event.__name__: m.name for m in MACHINES.values() for t in m.transitions}
