"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys, and the key text forms that go
with them. Pure: no I/O (key files are `landscape.keys`).

A note is text ending in a newline, a blank line, then signature lines
`— <key name> <base64(4-byte key id ‖ signature)>`. The key id is the first four bytes of
SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key); 0x01 is the signed-note type byte of Ed25519.

Key text forms (those of Go's golang.org/x/mod/sumdb/note, so other tools read our keys):
  verifier key  `<name>+<8 hex key id>+<base64(0x01 ‖ 32-byte public key)>`
  signer key    `PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 ‖ 32-byte private seed)>`
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from landscape.errors import LandscapeError, quoted

ED25519 = 0x01
#: More signature lines than this and the note is refused (the spec asks for at least 16).
MAX_SIGNATURES = 100
_SIG_PREFIX = "\u2014 "  # em dash, space
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX_ID = re.compile(r"[0-9a-f]{8}")


class NoteError(LandscapeError):
    """A note, signature or key text is malformed or does not verify; the message says which."""


def check_key_name(name: str) -> None:
    """Raise NoteError unless `name` may name a key: non-empty, no Unicode spaces, no '+'."""
    if not name:
        raise NoteError("a key name must not be empty")
    bad = next((c for c in name if c.isspace() or c == "+" or not c.isprintable()), None)
    if bad is not None:
        raise NoteError(f"key name {quoted(name)} holds {bad!r}; a key name has no spaces, '+' or control characters")


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte signed-note key id of an Ed25519 key under `name`."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


def b64decode_strict(text: str, what: str) -> bytes:
    """Standard base64 with padding, and only its canonical spelling (so one value, one text)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoteError(f"{what} is not base64") from None
    if base64.b64encode(raw).decode() != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _split_key_text(text: str, what: str) -> tuple[str, bytes, bytes]:
    """`name+hexid+base64(type ‖ key)` → (name, key id, key) after checking every part."""
    parts = text.split("+", 2)  # base64 may itself hold '+'; name and id cannot
    if len(parts) != 3:
        raise NoteError(f"{what} is not of the form NAME+KEYID+KEY")
    name, hex_id, encoded = parts
    check_key_name(name)
    if not _HEX_ID.fullmatch(hex_id):
        raise NoteError(f"{what}: key id {quoted(hex_id)} is not 8 lowercase hex digits")
    raw = b64decode_strict(encoded, f"{what}: the key")
    if not raw or raw[0] != ED25519:
        kind = f"type 0x{raw[0]:02x}" if raw else "empty"
        raise NoteError(f"{what}: the key is {kind}, not Ed25519 (0x01)")
    if len(raw) != 33:
        raise NoteError(f"{what}: an Ed25519 key is 32 bytes, this one is {len(raw) - 1}")
    return name, bytes.fromhex(hex_id), raw[1:]


@dataclass(frozen=True)
class Verifier:
    """A public key under a name: checks signatures by that name and key id."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key) != 32:
            raise NoteError(f"an Ed25519 public key is 32 bytes, not {len(self.public_key)}")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    @property
    def label(self) -> str:
        """`name+hexid`, how messages name this key."""
        return f"{self.name}+{self.key_id.hex()}"

    def text(self) -> str:
        """The verifier key text (what `NAME.pub` holds)."""
        return f"{self.label}+{_b64(bytes([ED25519]) + self.public_key)}"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        if text.startswith(_PRIVATE_PREFIX):
            raise NoteError("this is a private signing key, not a verifier (public) key")
        name, kid, public = _split_key_text(text, "verifier key")
        verifier = cls(name, public)
        if verifier.key_id != kid:
            raise NoteError(f"verifier key: key id {kid.hex()} does not match name and key ({verifier.key_id.hex()})")
        return verifier

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, text)
        except InvalidSignature:
            return False
        return True


class Signer:
    """An Ed25519 private key under a name."""

    __slots__ = ("_private", "name", "verifier")

    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        check_key_name(name)
        self.name = name
        self._private = private
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.verifier = Verifier(name, public)

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def parse(cls, text: str) -> Signer:
        if not text.startswith(_PRIVATE_PREFIX):
            raise NoteError("a signing key starts with PRIVATE+KEY+ (is this the .pub file?)")
        name, kid, seed = _split_key_text(text[len(_PRIVATE_PREFIX) :], "signing key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(seed))
        if signer.verifier.key_id != kid:
            raise NoteError(f"signing key: key id {kid.hex()} does not match name and key")
        return signer

    def text(self) -> str:
        """The signer key text (what `NAME.key` holds). Secret."""
        seed = self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return f"{_PRIVATE_PREFIX}{self.verifier.label}+{_b64(bytes([ED25519]) + seed)}"

    def sign(self, text: str) -> str:
        """The signed note of `text` (which must end in a newline)."""
        _check_text(text)
        signature = self._private.sign(text.encode())
        return f"{text}\n{_SIG_PREFIX}{self.name} {_b64(self.verifier.key_id + signature)}\n"

    def __repr__(self) -> str:  # never the key material
        return f"Signer({self.verifier.label!r})"


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes

    @property
    def label(self) -> str:
        return f"{self.name}+{self.key_id.hex()}"


@dataclass(frozen=True)
class Note:
    """A syntactically valid note: its text (ending in a newline) and its signature lines."""

    text: str
    signatures: tuple[Signature, ...]


def _check_text(text: str, what: str = "note text") -> None:
    if not text.endswith("\n"):
        raise NoteError(f"{what} does not end with a newline")
    m = _CONTROL.search(text)
    if m:
        line = text.count("\n", 0, m.start()) + 1
        raise NoteError(f"line {line} holds control character 0x{ord(m.group()):02x}; notes are plain text with \\n")


def parse_note(note: str | bytes) -> Note:
    """Split a signed note into text and signatures, refusing anything the format does not allow.
    Checks no signature: use `open_note` for that."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NoteError(f"note is not UTF-8 (byte {e.start})") from None
    _check_text(note, "note")
    # The text may itself hold blank lines; the signatures start after the last one.
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("note has no blank line before its signature lines")
    text, block = note[: cut + 1], note[cut + 2 :]
    if not block:
        raise NoteError("note ends with a blank line where its signature lines should be")
    count = block.count("\n")  # (counted before the block is split: a hostile one may hold millions)
    if count > MAX_SIGNATURES:
        raise NoteError(f"note has {count} signature lines, more than {MAX_SIGNATURES}")
    lines = block[:-1].split("\n")
    first = text.count("\n") + 2
    signatures = tuple(_parse_signature_line(line, first + i) for i, line in enumerate(lines))
    return Note(text, signatures)


def _parse_signature_line(line: str, number: int) -> Signature:
    if not line.startswith(_SIG_PREFIX):
        raise NoteError(f"line {number} is not a signature line ('— NAME SIGNATURE')")
    parts = line[len(_SIG_PREFIX) :].split(" ", 2)
    if len(parts) != 2:
        raise NoteError(f"line {number}: a signature line is '— NAME SIGNATURE', one space apart")
    name, encoded = parts
    try:
        check_key_name(name)
    except NoteError as e:
        raise NoteError(f"line {number}: {e}") from None
    raw = b64decode_strict(encoded, f"line {number}: the signature")
    if len(raw) < 5:
        raise NoteError(f"line {number}: a signature is a 4-byte key id and at least one byte")
    return Signature(name, raw[:4], raw[4:])


def open_note(note: str | bytes, verifiers: Verifier | Sequence[Verifier]) -> Note:
    """The note, once a signature by one of `verifiers` verifies; NoteError otherwise.

    Signatures by other keys are ignored (as the spec requires: co-signers, rotated keys); a
    signature that claims a known key's name and id but does not verify refuses the whole note."""
    known = [verifiers] if isinstance(verifiers, Verifier) else list(verifiers)
    parsed = parse_note(note)
    data = parsed.text.encode()
    verified = False
    for sig in parsed.signatures:
        for v in known:
            if sig.name == v.name and sig.key_id == v.key_id:
                if len(sig.signature) != 64 or not v.verify(data, sig.signature):
                    raise NoteError(f"the signature by {v.label} does not verify: the note was changed after signing")
                verified = True
    if not verified:
        present = ", ".join(s.label for s in parsed.signatures)
        wanted = ", ".join(v.label for v in known) or "no key"
        raise NoteError(f"note is not signed by {wanted} (it is signed by {present})")
    return parsed
