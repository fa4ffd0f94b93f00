"""Text an operator gives that is recorded for good and shown on investigators' terminals: the
reason a run is abandoned, or row data erased."""

from __future__ import annotations

import unicodedata

MAX_REASON_CHARS = 1000


def reason_problem(reason: str, why: str) -> str | None:
    """What is wrong with `reason` (as `--reason: ...; allowed: ...`), or None. `why` says what
    the reason is to say, for the message: "why the run is not to go on"."""
    text = reason.strip()
    if not text:
        return f"--reason: empty; allowed: a sentence saying {why}"
    if len(text) > MAX_REASON_CHARS:
        return f"--reason: {len(text):,} characters; allowed: at most {MAX_REASON_CHARS:,}"
    # Shown on investigators' terminals: an escape sequence could rewrite what they read, a
    # bidirectional override or a zero-width character hide or reorder it, a line separator
    # start a line that looks like another event's.
    hidden = [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    if hidden:
        return (
            f"--reason: holds U+{ord(hidden[0]):04X}, a control, format or line-separating character; allowed: one "
            "line of visible text"
        )
    if all(unicodedata.category(c).startswith(("Z", "M")) for c in text):
        return f"--reason: nothing visible in it; allowed: a sentence saying {why}"
    return None
