"""The set of token ids a log being checked has ended, at about a bit each for the ids ELSPETH makes.

Checking a stored log, the fold refuses a token created twice, so it remembers every token that
ended: in a set of strings that cost 90-170 bytes each, 1.7 GB for a replay or resume of ten
million rows of the linear example, four times that with a fork and a join. The engine's ids have
few shapes: `r<N>` for source row N, `r<N>.<branch>` for its fork's children, `r<N>+<join>` for
their merge, `r<N>.<i>` for what a transform expanded it to, `<aggregation>#<K>.<i>` for the
outputs of batch K. Each is a text, a number and a text, and the texts repeat: an id is kept as
bit N of its shape's bitmap. Any other id is kept as it is, in a set: one with no number, one of
a shape beyond the first `_SHAPES`, or one whose number is far beyond what its shape holds (a bitmap
grows to at most `_BITS_PER_ID` bits for each id it holds, so a hostile log gains nothing by
naming huge numbers). The answers are a set's; `tests/test_token_ids.py` checks them against one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# The text before the first ASCII digit, the number those digits spell (written as Python writes
# it: no leading zero, at most 18 digits), and the rest. Any text splits one way only, and the
# three spell it again: two ids that differ never share a shape and a number. (One match gives
# all three: a replay asks this of every token twice.)
_NUMBER = re.compile(r"([^0-9]*)(0|[1-9][0-9]{0,17})(.*)", re.ASCII | re.DOTALL)
_SHAPES = 1024
_BITS_PER_ID = 256
_FREE_BITS = 1 << 16  # what any shape may take before it holds anything (8 KB)


class _Bitmap:
    __slots__ = ("bits", "count")

    def __init__(self) -> None:
        self.bits = bytearray()
        self.count = 0


class EndedIds:
    """A set of strings (`add`, `in`, `len`), compact for token ids of a few shapes."""

    __slots__ = ("_maps", "_others")

    def __init__(self) -> None:
        self._maps: dict[tuple[str, str], _Bitmap] = {}
        self._others: set[str] = set()

    def add(self, token_id: str) -> None:
        if self._others and token_id in self._others:
            return  # (added when its bitmap had no room for it: it stays where it is)
        found = self._place(token_id, grow=True)
        if found is None:
            self._others.add(token_id)
            return
        bitmap, n = found
        byte, bit = n >> 3, 1 << (n & 7)
        if not bitmap.bits[byte] & bit:
            bitmap.bits[byte] |= bit
            bitmap.count += 1

    def __contains__(self, token_id: object) -> bool:
        if not isinstance(token_id, str):
            return False
        found = self._place(token_id, grow=False)
        if found is not None and found[0].bits[found[1] >> 3] & (1 << (found[1] & 7)):
            return True
        return token_id in self._others

    def __len__(self) -> int:
        return len(self._others) + sum(b.count for b in self._maps.values())

    def __iter__(self) -> Iterator[str]:
        yield from self._others
        for (prefix, suffix), bitmap in self._maps.items():
            for byte, value in enumerate(bitmap.bits):
                if value:
                    yield from (f"{prefix}{byte * 8 + bit}{suffix}" for bit in range(8) if value >> bit & 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EndedIds):
            return NotImplemented
        return len(self) == len(other) and set(self) == set(other)

    __hash__ = None  # type: ignore[assignment]  # (changes as it is added to, as a set does)

    def _place(self, token_id: str, *, grow: bool) -> tuple[_Bitmap, int] | None:
        """The bitmap and bit for `token_id` (room made for it, with `grow`); None when it has
        none. An id added when it had none is in the set, and stays there when its bitmap grows
        later: `add` and `in` look there first."""
        m = _NUMBER.match(token_id)
        if m is None:
            return None
        prefix, digits, suffix = m.groups()
        shape = (prefix, suffix)
        n = int(digits)
        bitmap = self._maps.get(shape)
        if bitmap is None:
            if not grow or len(self._maps) >= _SHAPES:
                return None
            bitmap = self._maps[shape] = _Bitmap()
        size = len(bitmap.bits)
        if n >> 3 < size:
            return bitmap, n
        if not grow or n >= max(_FREE_BITS, _BITS_PER_ID * (bitmap.count + 1)):
            return None
        bitmap.bits.extend(bytes(max(size, (n >> 3) + 1 - size)))  # (doubling: amortised)
        return bitmap, n
