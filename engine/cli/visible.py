"""What a command prints shows text, never terminal controls.

Run ids, reasons, paths and settings come from the store and from the input, and whoever could
write either could put an escape sequence there: an OSC that retitles the window or plants a
link, a CSI that hides or rewrites what is shown, a carriage return that prints over a line, a
bidirectional override that reorders it. Printed as they are, they would act on the terminal of
the investigator reading the output (a hostile review planted one in a run id). Every write to
standard output, and every line on standard error (`say`, and errors), shows them as escapes
(`\\u001b`, `\\u202e`) instead; a tab and a line break stay as they are. The escapes are JSON's: inside a string of `--json`
output (whose encoder escapes C0 controls itself, but not DEL, C1 or the overrides) they read
back as the very characters.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import sys
from typing import Any, TextIO, cast

import click

from landscape.visible import visible as visible


def _json_escape(e: UnicodeError) -> tuple[str, int]:
    """What an encoding cannot take, as JSON's escapes (a character past U+FFFF as its UTF-16
    surrogate pair): `--json` output read back is the very text ('backslashreplace' made `\\xe9`,
    which JSON refuses)."""
    assert isinstance(e, UnicodeEncodeError)
    out = []
    for c in e.object[e.start : e.end]:
        code = ord(c)
        if code > 0xFFFF:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out), e.end


codecs.register_error("elspeth-json-escape", _json_escape)


class OutputLost(Exception):
    """Standard output took no more (its reader closed the pipe, a full disk): what the command
    printed is cut short, which it must say (`main`) rather than end as if all was shown."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _VisibleStream:
    """A text stream whose writes go through `visible`; everything else is the stream's but its
    binary `buffer`, which a writer could reach around the filter through (click does, for a
    stream whose encoding it takes for misconfigured, ASCII say)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        shown = visible(text)
        try:
            try:
                self._stream.write(shown)
            except UnicodeEncodeError:  # (an ASCII terminal: what it cannot show, as escapes too)
                encoding = self._stream.encoding or "ascii"
                self._stream.write(shown.encode(encoding, "elspeth-json-escape").decode(encoding))
        except OSError as e:
            raise OutputLost(e) from e
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            raise OutputLost(e) from e

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        if name == "buffer":
            raise AttributeError(name)
        return getattr(self._stream, name)


class _Closed(io.TextIOBase):
    """Standard output when the command was started without one (`>&-`): a write fails, so that
    the command says its output was lost rather than drop it in silence (as click would)."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")


def install() -> None:
    """Standard output, from here on, through `visible` (once)."""
    if not isinstance(sys.stdout, _VisibleStream):
        sys.stdout = _VisibleStream(sys.stdout if sys.stdout is not None else cast(TextIO, _Closed()))


def say(text: str) -> None:
    """A line on standard error that is no error (a warning, a note, a progress line), through
    `visible` as error lines are: it may quote a path, a settings key or a store's words. (The
    progress bar writes its own terminal codes there, and writes nothing else.)"""
    # Standard error that takes no more (a reader that closed the pipe: `run … 2>&1 | head`) cuts
    # what is said, never what is done: a run stopped by its progress line was left unfinished,
    # with no word of why. (With no standard error at all, click writes nothing.)
    with contextlib.suppress(OSError):
        click.echo(visible(text), err=True)


def write_bytes(data: bytes) -> None:
    """Bytes to standard output as they are, past `visible`: what is only printable text already
    and must not change by a byte (a signed note, checked before it is written)."""
    stream = sys.stdout._stream if isinstance(sys.stdout, _VisibleStream) else sys.stdout
    try:
        stream.flush()
        buffer = getattr(stream, "buffer", None)
        if buffer is None:  # (also a closed standard output: its write fails)
            stream.write(data.decode())
        else:
            buffer.write(data)
            buffer.flush()
    except OSError as e:
        raise OutputLost(e) from e
