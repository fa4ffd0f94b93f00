"""The wiring a row's proof bundle is held to (landscape/wiring.py), on events made by hand:
what each kind of event requires of where the token is. (That genuine logs are always on the
wiring: the crash/resume and invariant properties, tests/engine_harness.py.)"""

from __future__ import annotations

from landscape.records import StoredEvent
from landscape.wiring import Wirings, off_the_wiring
from statecharts import events as ev

Held = tuple[StoredEvent, ev.EventBase]


def _held(seq: int, token: str, event: ev.EventBase) -> Held:
    return StoredEvent("r", seq, "token", token, type(event).__name__, 1, 0, b"", b"", b"", b""), event


def _step(node: str, nxt: str) -> ev.StepCompleted:
    return ev.StepCompleted(node=node, input_hash="h", output_hash="h", duration_us=1, next=nxt)


SINKS = {"large": {}, "other": {}, "spill": {}}
BEFORE = {"gates": [{"name": "category", "input": "validated"}], "sinks": SINKS}
# A forced resume at seq 100 put a gate before it.
AFTER = {
    "gates": [{"name": "size", "input": "validated"}, {"name": "category", "input": "by_category"}],
    "sinks": SINKS,
}


def _wirings() -> Wirings:
    w = Wirings()
    w.add(0, BEFORE)
    w.add(100, AFTER)
    return w


def test_a_token_made_after_a_forced_resume_is_held_to_the_settings_it_made() -> None:
    """Found by a hostile review: every version recorded before an event was allowed, so the
    settings the resume replaced explained a row made after it whose gate step was left out."""
    token = [
        _held(150, "t", ev.TokenCreated(row_index=9, data_hash="h", at="validated")),
        _held(151, "t", _step("size", "by_category")),
        _held(152, "t", _step("category", "other")),
        _held(153, "t", ev.SinkAssigned(sink="other", outcome="routed", node="category")),
    ]
    assert off_the_wiring(token, _wirings()) == set()
    assert off_the_wiring(token[:1] + token[2:], _wirings()) == {"t"}


def test_a_token_in_flight_across_the_resume_is_taken_up_by_either() -> None:
    created = _held(50, "t", ev.TokenCreated(row_index=1, data_hash="h", at="validated"))
    for node, nxt in (("size", "by_category"), ("category", "other")):
        assert off_the_wiring([created, _held(120, "t", _step(node, nxt))], _wirings()) == set(), node
    # Before the resume, only the settings in force then.
    assert off_the_wiring([created, _held(60, "t", _step("size", "by_category"))], _wirings()) == {"t"}


def test_a_sinks_refusal_needs_the_tokens_assignment_to_that_sink() -> None:
    """A hostile review: the token's assignment to its sink taken out, the sink's refusal (its
    diversion to on_write_failure) passed, the token being on the connection named as the sink."""
    w = Wirings()
    w.add(0, {"gates": [{"name": "g", "input": "raw"}], "sinks": SINKS})
    token = [
        _held(1, "t", ev.TokenCreated(row_index=0, data_hash="h", at="raw")),
        _held(2, "t", _step("g", "large")),
        _held(3, "t", ev.SinkAssigned(sink="large", outcome="routed", node="g")),
        _held(4, "t", ev.SinkAssigned(sink="spill", outcome="diverted", node="large", reason="refused")),
        _held(5, "t", ev.TokenDiverted(node="large", reason="refused", sink="spill")),
    ]
    assert off_the_wiring(token, w) == set()
    assert off_the_wiring(token[:2] + token[3:], w) == {"t"}


def test_a_connection_recorded_as_its_fingerprint_is_not_judged() -> None:
    """Found by a hostile review: a coalesce branch named like a secret (`credentials`) has its
    connection recorded as an HMAC fingerprint, and every genuine bundle of the pipeline was said
    to have events left out. What the settings do not show is not judged."""
    w = Wirings()
    w.add(0, {"coalesce": [{"name": "join", "branches": {"credentials": "hmac-sha256:ab12"}}], "sinks": SINKS})
    token = [
        _held(1, "t.c", ev.TokenCreated(row_index=0, data_hash="h", at="c_done", branch="credentials")),
        _held(2, "t.c", ev.TokenHeld(coalesce_id="join:t", branch="credentials")),
    ]
    assert off_the_wiring(token, w) == set()


def test_a_place_only_a_left_out_settings_event_shows_is_off_the_wiring() -> None:
    """A re-review: with a place the settings did not show not judged, a bundle that left out a
    forced resume's settings event had every later step of a row judged by nothing. Only where
    the settings hide a connection (as a fingerprint) is such a place let go."""
    only_before = Wirings()
    only_before.add(0, BEFORE)  # the resume's settings (AFTER, at seq 100) left out
    made = [
        _held(150, "t", ev.TokenCreated(row_index=9, data_hash="h", at="validated")),
        _held(151, "t", _step("size", "by_category")),
        _held(152, "t", _step("category", "other")),
    ]
    # by_category, where size sent it, is a place BEFORE does not show: category's step there, or
    # any later one, is judged off the wiring, not let go. (That category could have read the row
    # straight from the source under BEFORE is the limit docs/verification.md says.)
    assert off_the_wiring(made, only_before) == {"t"}
    # A node of both: it sent the row on to `mid`, which only the resume's settings show (a new
    # step there, left out), then the row's sink.
    first = {"transforms": [{"name": "t1", "input": "raw"}], "sinks": SINKS}
    wirings = Wirings()
    wirings.add(0, first)
    row = [
        _held(150, "u", ev.TokenCreated(row_index=9, data_hash="h", at="raw")),
        _held(151, "u", _step("t1", "mid")),
        _held(153, "u", ev.SinkAssigned(sink="other", outcome="completed")),
    ]
    assert off_the_wiring(row, wirings) == {"u"}


def test_an_aggregations_step_or_failure_needs_the_tokens_buffering_in_it() -> None:
    """A re-review: a token's buffering left out alone passed, the aggregation's own step (a
    passthrough batch's) reading the same connection. What is lost is which batch held it."""
    w = Wirings()
    w.add(0, {"aggregations": [{"name": "agg", "input": "raw"}], "sinks": SINKS})
    for end in (_step("agg", "other"), ev.TokenFailed(reason="batch_failed", node="agg")):
        token = [
            _held(1, "t", ev.TokenCreated(row_index=0, data_hash="h", at="raw")),
            _held(2, "t", ev.TokenBuffered(batch_id="agg#1")),
            _held(5, "t", end),
        ]
        assert off_the_wiring(token, w) == set(), end
        assert off_the_wiring(token[:1] + token[2:], w) == {"t"}, end
