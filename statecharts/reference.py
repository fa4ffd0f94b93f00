"""The `transitions` library's view of our machines: the reference the compiled tables are
checked against, and a live model for the few long-lived entities (runs, batches)."""

from __future__ import annotations

from typing import Any

from transitions import Machine, MachineError

from statecharts.compiled import InvalidTransition
from statecharts.machines import INITIAL, MachineDef


class ReferenceModel:
    """One entity driven by a real `transitions.Machine`."""

    state: str

    def __init__(self, machine: MachineDef, initial: str = INITIAL) -> None:
        self.machine_name = machine.name
        self._machine = Machine(
            model=self,
            states=[INITIAL, *machine.states],
            initial=initial,
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )
        for t in machine.transitions:
            dest: Any = "=" if t.dest is None else t.dest  # "=": reflexive transition
            self._machine.add_transition(t.trigger, list(t.sources), dest)

    def fire(self, trigger: str) -> str:
        try:
            self.trigger(trigger)  # type: ignore[attr-defined]  # added by transitions
        except (MachineError, AttributeError) as e:
            raise InvalidTransition(self.machine_name, self.state, trigger) from e
        return self.state
