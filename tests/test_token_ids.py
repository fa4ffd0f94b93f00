"""`EndedIds` answers as a set of strings does, whatever the ids, and holds the engine's in bits."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from landscape import token_ids
from landscape.token_ids import EndedIds

# Ids like the engine's, and like a hostile log's: numbers with leading zeros, non-ASCII digits
# (which int() reads: '٣' is 3), huge numbers, no number, many shapes, line breaks after the number.
_numbers = st.one_of(
    st.integers(0, 300).map(str),
    st.integers(0, 10**20).map(str),
    st.integers(0, 9).map(lambda n: f"0{n}"),
    st.sampled_from(["0", "00", "007", "7", "٣", "3", "²", "1" * 19, "18446744073709551616"]),
)
_texts = st.sampled_from(["r", "", ".a", ".b", "+join", "agg#", "agg1#", ".0", ".", "#", "x٣", "\n", "\n.a"])
_ids = st.one_of(
    st.builds(lambda a, n, b: a + n + b, _texts, _numbers, _texts),
    st.builds(lambda a, n, b, m: a + n + b + m, _texts, _numbers, _texts, _numbers),
    st.text(max_size=6),
)


@settings(max_examples=400)
@given(st.lists(st.tuples(st.booleans(), _ids), max_size=120))
def test_it_answers_as_a_set(steps: list[tuple[bool, str]]) -> None:
    ids, expected = EndedIds(), set()
    for adding, token_id in steps:
        if adding:
            ids.add(token_id)
            expected.add(token_id)
        assert (token_id in ids) == (token_id in expected)
        assert len(ids) == len(expected)
    assert sorted(ids) == sorted(expected) and len(list(ids)) == len(expected)
    for _adding, token_id in steps:
        assert (token_id in ids) == (token_id in expected)
        assert (token_id + "x" in ids) == (token_id + "x" in expected)


def test_ids_that_spell_one_number_differently_are_different_ids() -> None:
    ids = EndedIds()
    for token_id in ("r7", "r0", "r3", "r" + "1" * 18, "a1b"):
        ids.add(token_id)
    for other in ("r007", "r07", "r00", "r٣", "r³", "r" + "1" * 19, "a01b", "a1b "):
        assert other not in ids
        ids.add(other)
        assert other in ids
    assert len(ids) == 13


def test_an_id_kept_aside_stays_found_once_its_bitmap_grows_past_it(monkeypatch: object) -> None:
    ids = EndedIds()
    far = f"r{token_ids._FREE_BITS * 4}"
    ids.add(far)  # no room yet: kept as it is
    for n in range(token_ids._FREE_BITS * 4 // token_ids._BITS_PER_ID + 2):
        ids.add(f"r{n}")  # the bitmap may now reach it
    ids.add(far)
    assert far in ids
    assert len(ids) == token_ids._FREE_BITS * 4 // token_ids._BITS_PER_ID + 3


def test_a_million_rows_of_a_fork_and_a_join_take_a_bit_each_not_a_string_each() -> None:
    tracemalloc.start()
    try:
        ids = EndedIds()
        for n in range(250_000):
            for token_id in (f"r{n}", f"r{n}.a", f"r{n}.b", f"r{n}+join"):
                ids.add(token_id)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(ids) == 1_000_000
    assert held < 1_000_000  # a set of the same strings: over 80 MB
    assert "r249999+join" in ids and "r250000" not in ids and "r12.c" not in ids


def test_huge_numbers_in_a_hostile_log_do_not_make_bitmaps_grow() -> None:
    ids = EndedIds()
    for n in range(2000):
        ids.add(f"r{10**15 + n * 10**9}")
    assert len(ids) == 2000
    assert all(len(b.bits) == 0 for b in ids._maps.values())


def _chained(run_id: str, entries: list[tuple[str, object]]) -> list[object]:
    """A log of these (entity, event) entries, hash-chained as a writer chains them."""
    import hashlib

    from landscape.chain import GENESIS, event_hash
    from landscape.records import StoredEvent
    from statecharts.compiled import EVENT_MACHINE
    from statecharts.events import encode_event

    log, prev = [], GENESIS
    for seq, (entity, event) in enumerate(entries):
        kind = type(event).__name__
        body = encode_event(event)  # type: ignore[arg-type]
        version = type(event).SCHEMA_VERSION  # type: ignore[attr-defined]
        h = event_hash(prev, run_id, seq, EVENT_MACHINE[kind], entity, kind, version, 1000 + seq,
                       hashlib.sha256(body).digest())  # fmt: skip
        log.append(StoredEvent(run_id, seq, EVENT_MACHINE[kind], entity, kind, version, 1000 + seq, body,
                               hashlib.sha256(body).digest(), prev, h))  # fmt: skip
        prev = h
    return log


def test_a_verified_log_that_creates_a_token_again_after_it_ended_is_refused_at_that_event() -> None:
    from landscape.verify import verify_events
    from statecharts import events as ev

    created = ev.RunCreated(settings_path="s.yaml", settings_hash="h", settings={}, source_fingerprint="f", nodes=[],
                            elspeth_version="test", working_dir=".")  # fmt: skip
    entries: list[tuple[str, object]] = [("run", created), ("run", ev.RunStarted())]
    for index, token in enumerate(("r0", "r1.a", "r0")):
        entries += [(token, ev.TokenCreated(row_index=index, data_hash="0" * 64, at="in")),
                    (token, ev.TokenQuarantined(reason="x"))]  # fmt: skip
    verified = verify_events("run", _chained("run", entries))  # type: ignore[arg-type]
    assert verified.bad is not None and verified.bad.seq == 6, verified.bad
    assert "r0: " in verified.bad.why and "exists" in verified.bad.why, verified.bad.why
    assert verify_events("run", _chained("run", entries[:6])).ok  # type: ignore[arg-type]
