"""Signed notes and checkpoints: interoperable with the signed-note ecosystem, and strict: every
malformed note, wrong key or name, extra or missing newline is refused with its reason."""

from __future__ import annotations

import base64
import tracemalloc
from collections.abc import Callable

import pytest

from landscape.checkpoint import (
    Checkpoint,
    CheckpointError,
    open_checkpoint,
    parse_checkpoint,
    parse_run_origin,
    run_origin,
)
from landscape.merkle import EMPTY_ROOT, leaf_hash
from landscape.note import NoteError, Signer, Verifier, key_id, open_note, parse_note

# The example key and note of Go's golang.org/x/mod/sumdb/note documentation: reading its key and
# producing its exact signature proves our key ids, key texts and signature lines interoperate.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
GO_NOTE = GO_TEXT + "\n" + GO_SIG


def test_the_go_note_example_is_reproduced_byte_for_byte() -> None:
    signer = Signer.parse(GO_SKEY)
    assert signer.text() == GO_SKEY
    assert signer.verifier.text() == GO_VKEY
    assert Verifier.parse(GO_VKEY) == signer.verifier
    assert signer.verifier.key_id == bytes.fromhex("c74f20a3") == key_id("PeterNeumann", signer.verifier.public_key)
    assert signer.sign(GO_TEXT) == GO_NOTE
    assert open_note(GO_NOTE, Verifier.parse(GO_VKEY)).text == GO_TEXT
    assert "AYEKF" not in repr(signer)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate("elspeth-ops")


def test_a_fresh_key_signs_and_its_text_forms_round_trip(signer: Signer) -> None:
    assert Signer.parse(signer.text()).verifier == signer.verifier
    note = signer.sign("hello\n\nworld\n")  # a text may hold blank lines
    opened = open_note(note.encode(), signer.verifier)
    assert opened.text == "hello\n\nworld\n"
    assert [s.label for s in opened.signatures] == [signer.verifier.label]


def test_other_signatures_are_ignored_and_a_known_one_suffices(signer: Signer) -> None:
    other = Signer.generate("witness.example/w1")
    note = signer.sign(GO_TEXT)
    cosigned = note + other.sign(GO_TEXT).split("\n\n")[-1]
    assert open_note(cosigned, signer.verifier).text == GO_TEXT
    assert open_note(cosigned, [Verifier.parse(GO_VKEY), other.verifier]).text == GO_TEXT


@pytest.mark.parametrize(
    ("note", "says"),
    [
        (GO_NOTE[:-1], "note does not end with a newline"),
        (GO_NOTE + "\n", "ends with a blank line"),
        (GO_TEXT + GO_SIG, "no blank line before its signature lines"),
        (GO_TEXT + "\n\n" + GO_SIG, "does not verify"),  # an extra blank line is part of the text
        (GO_NOTE.replace("\n", "\r\n"), "control character 0x0d"),
        (GO_NOTE.replace("cryptography", "crypto\tgraphy"), "line 1 holds control character 0x09"),
        (GO_NOTE.replace("— ", "-- "), "line 4 is not a signature line"),
        (GO_NOTE.replace("— PeterNeumann ", "— PeterNeumann  "), "one space apart"),
        (GO_NOTE.replace("— PeterNeumann", "— Peter+Neumann"), "holds '\\+'"),
        (GO_NOTE.replace("x08go/", "x08go!"), "signature is not base64"),
        (GO_NOTE.replace("AM=\n", "AN=\n"), "not canonical base64"),
        (GO_TEXT + "\n— PeterNeumann AAAA\n", "a 4-byte key id and at least one byte"),
        (GO_NOTE + GO_SIG * 100, "more than 100"),
        (GO_NOTE.replace("— PeterNeumann", "— "), "line 4: a key name must not be empty"),
    ],
)
def test_malformed_notes_are_refused_with_the_reason(note: str, says: str) -> None:
    with pytest.raises(NoteError, match=says):
        open_note(note, Verifier.parse(GO_VKEY))


def test_a_note_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(NoteError, match=r"not UTF-8 \(byte 3\)"):
        parse_note(b"abc\xff\n\n" + GO_SIG.encode())


def test_wrong_key_wrong_name_and_changed_text_are_refused(signer: Signer) -> None:
    with pytest.raises(
        NoteError, match=r"not signed by elspeth-ops\+[0-9a-f]{8} \(it is signed by PeterNeumann\+c74f20a3\)"
    ):
        open_note(GO_NOTE, signer.verifier)
    # The right key under another name is another key (the id covers the name).
    renamed = Verifier("PeterNeumann2", Verifier.parse(GO_VKEY).public_key)
    with pytest.raises(NoteError, match="not signed by PeterNeumann2"):
        open_note(GO_NOTE, renamed)
    # The known key's id and signature under another name is another key's line: ignored.
    with pytest.raises(NoteError, match=r"not signed by PeterNeumann\+c74f20a3 \(it is signed by Other\+c74f20a3\)"):
        open_note(GO_NOTE.replace("— PeterNeumann", "— Other"), Verifier.parse(GO_VKEY))
    # The name and id of the known key, but another key's signature: the whole note is refused.
    impostor = GO_TEXT + "\n" + signer.sign(GO_TEXT).split("\n\n")[-1].replace("elspeth-ops", "PeterNeumann")
    forged = impostor.replace(impostor.split(" ")[-1][:6], base64.b64encode(bytes.fromhex("c74f20a3")).decode()[:6])
    with pytest.raises(NoteError, match=r"signature by PeterNeumann\+c74f20a3 does not verify"):
        open_note(forged, Verifier.parse(GO_VKEY))
    with pytest.raises(NoteError, match="does not verify"):
        open_note(GO_NOTE.replace("answer", "Answer"), Verifier.parse(GO_VKEY))
    with pytest.raises(NoteError, match="not signed by no key"):
        open_note(GO_NOTE, [])


GO_PUB = base64.b64decode(GO_VKEY.split("+", 2)[2])[1:]


def _key(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("PeterNeumann+c74f20a3", "NAME\\+KEYID\\+KEY"),
        ("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 lowercase hex"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+c74f20a3+" + _key(bytes([2]) + GO_PUB), "type 0x02, not Ed25519"),
        ("PeterNeumann+c74f20a3+" + _key(bytes([1]) + GO_PUB[:31]), "32 bytes, this one is 31"),
        ("PeterNeumann+c74f20a3+", "empty, not Ed25519"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "holds ' '"),
        (GO_SKEY, "private signing key, not a verifier"),
    ],
)
def test_malformed_verifier_keys_are_refused(text: str, says: str) -> None:
    with pytest.raises(NoteError, match=says):
        Verifier.parse(text)


def test_a_public_key_is_not_a_signing_key() -> None:
    with pytest.raises(NoteError, match="starts with PRIVATE"):
        Signer.parse(GO_VKEY)
    with pytest.raises(NoteError, match="does not match"):
        Signer.parse(GO_SKEY.replace("c74f20a3", "c74f20a4"))


ROOT = leaf_hash(b"x")


def test_checkpoint_text_is_the_c2sp_form_and_round_trips(signer: Signer) -> None:
    origin = run_origin("store-7f3a", "run-20261130-a1b2c3")
    assert origin == "elspeth/store-7f3a/run-20261130-a1b2c3"
    assert parse_run_origin(origin) == ("store-7f3a", "run-20261130-a1b2c3")
    cp = Checkpoint(origin, 276, ROOT)
    assert cp.text() == f"{origin}\n276\n{base64.b64encode(ROOT).decode()}\n"
    note = cp.sign(signer)
    assert open_checkpoint(note, signer.verifier, origin=origin) == cp
    with_ext = Checkpoint(origin, 0, EMPTY_ROOT, ("time 2026-11-30T06:00:00Z",))
    assert parse_checkpoint(with_ext.text()) == with_ext


def test_a_checkpoint_of_another_run_or_key_is_refused(signer: Signer) -> None:
    note = Checkpoint(run_origin("s", "run-1"), 5, ROOT).sign(signer)
    with pytest.raises(CheckpointError, match="is of 'elspeth/s/run-1', not 'elspeth/s/run-2'"):
        open_checkpoint(note, signer.verifier, origin=run_origin("s", "run-2"))
    with pytest.raises(NoteError, match="not signed by"):
        open_checkpoint(note, Signer.generate("elspeth-ops").verifier)


B64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (f"o\n5\n{B64}", "does not end with a newline"),
        ("o\n5\n", "has 2 line"),
        (f"o\n05\n{B64}\n", "leading zeros"),
        (f"o\n+5\n{B64}\n", "not a decimal"),
        (f"o\n5 \n{B64}\n", "not a decimal"),
        (f"o\n\u0665\n{B64}\n", "not a decimal"),  # an Arabic-Indic five: int() would take it
        (f"o\n1_0\n{B64}\n", "not a decimal"),
        # read before the signature: Python refuses int() of over 4,300 digits (a bare ValueError)
        (f"o\n{'9' * 5000}\n{B64}\n", "at most 19 digits"),
        (f"o\n{'9' * 20}\n{B64}\n", "at most 19 digits"),
        (f"o\n5\n{B64[:-4]}\n", "32 bytes, not 30"),
        (f"o\n5\n{B64.rstrip('=')}\n", "not base64"),
        (f"o\n5\n{B64}\n\n", "line 4 is empty"),
        (f"o\n5\n{B64}\n\next\n", "line 4 is empty"),
        (f"\n5\n{B64}\n", "line 1 is empty"),
        (f"my log\n5\n{B64}\n", "without spaces"),
    ],
)
def test_malformed_checkpoints_are_refused(text: str, says: str) -> None:
    with pytest.raises(NoteError, match=says):
        parse_checkpoint(text)


def test_origin_parts_cannot_smuggle_separators() -> None:
    for store, run in (("a/b", "r"), ("s", "r+1"), ("", "r"), ("s", "r 1")):
        with pytest.raises(CheckpointError):
            run_origin(store, run)
    for origin in ("elspeth/s", "other/s/r", "elspeth/s/r/x", "elspeth//r"):
        with pytest.raises(CheckpointError):
            parse_run_origin(origin)


def _peak(call: Callable[[], object]) -> tuple[BaseException | None, int]:
    """What `call` raised, and the most memory it held at once (tracemalloc)."""
    tracemalloc.start()
    try:
        call()
        raised: BaseException | None = None
    except Exception as e:
        raised = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


@pytest.mark.parametrize(
    ("hostile", "read", "words"),
    [
        ("ab/" * 1_000_000, parse_run_origin, "is not elspeth/<store id>/<run id>"),
        ("x\n\n" + "ab\n" * 1_000_000, parse_note, "more than 100"),
        ("o\n" + "ab\n" * 1_000_000, parse_checkpoint, "more than 100"),
        ("elspeth/s/" + "r" * 3_000_000 + " ", parse_run_origin, "holds ' ', which an origin part cannot"),
        ("elspeth/s/" + "r" * 3_000_000 + " ", lambda t: Checkpoint(t, 0, EMPTY_ROOT), "without spaces or '+'"),
    ],
    ids=["origin", "note", "checkpoint", "long-run-id", "long-origin"],
)
def test_a_hostile_text_is_refused_before_it_is_split_and_quoted_only_in_part(
    hostile: str, read: Callable[[str], object], words: str
) -> None:
    """An export's header origin, a checkpoint line's note, a bundle's origin: text no signature
    has vouched for yet, up to a line's limit long. Split at every '/' or newline, 3 MB of
    `ab/` became a million strings (about 60 MB: a 256 MiB line, 6-8 GB); quoted whole, the error
    was a line as long. Counted first, refused, and quoted in part."""
    raised, peak = _peak(lambda: read(hostile))
    assert isinstance(raised, (CheckpointError, NoteError)), raised
    assert words in str(raised) and len(str(raised)) < 300, str(raised)[:300]
    assert peak < 2 * len(hostile), peak / len(hostile)
