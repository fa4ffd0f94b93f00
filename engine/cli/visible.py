"""What a command prints shows text, never terminal controls.

Run ids, reasons, paths and settings come from the store and from the input, and whoever could
write either could put an escape sequence there: an OSC that retitles the window or plants a
link, a CSI that hides or rewrites what is shown, a carriage return that prints over a line, a
bidirectional override that reorders it. Printed as they are, they would act on the terminal of
the investigator reading the output (a hostile review planted one in a run id). Every write to
standard output, and every error line, shows them as escapes (`\\x1b`, `\\u202e`) instead; a tab
and a line break stay as they are.
"""

from __future__ import annotations

import re
import sys
from typing import Any, TextIO

# C0 controls but tab and line feed, DEL, C1 controls, and the bidirectional embeddings,
# overrides and isolates.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escaped(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    return _CONTROLS.sub(_escaped, text)


class _VisibleStream:
    """A text stream whose writes go through `visible`; everything else is the stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(visible(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def install() -> None:
    """Standard output, from here on, through `visible` (once)."""
    if not isinstance(sys.stdout, _VisibleStream):
        sys.stdout = _VisibleStream(sys.stdout)
