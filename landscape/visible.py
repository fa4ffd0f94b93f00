"""Text as a terminal should show it: controls and look-alike marks as escapes.

Run ids, reasons, paths, settings and the server's own log lines come from the store, the input
and other people's files; whoever could write one of them could put an escape sequence there,
which printed as it is acts on the reader's terminal (see `engine.cli.visible`). Everything
ELSPETH prints goes through `visible`: the commands' output and their lines on standard error,
and the embedded server's notes.
"""

from __future__ import annotations

import re

# C0 controls but tab and line feed, DEL, C1 controls, the bidirectional embeddings, overrides,
# isolates and marks (U+061C, U+200E, U+200F), the zero-width space and no-break space (U+200B,
# U+FEFF: text that looks like other text), and the line and paragraph separators.
_CONTROLS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]"
)


def _escaped(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def visible(text: str) -> str:
    """`text` with each control (but tab and line feed) as a JSON escape, `\\u001b`."""
    return _CONTROLS.sub(_escaped, text)


def one_line(value: object) -> str:
    """`value` as part of one line of output or of an error: a line feed in it as its escape,
    `\\u000a` (every other control `visible` escapes on the way out). A run id or path the
    operator typed, a settings file, a folder or a reason can hold one, and printed as it is, what
    followed read as a line of its own (a review printed a forged `rows:` line under `working
    folder`, another an `elspeth: error:` line after an unknown run's id)."""
    return str(value).replace("\n", "\\u000a")
