"""Aggregations: a batch of rows in, rows out."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from engine.plugins.options import Options
from engine.plugins.protocol import BatchResult, PluginConfigError, Row, RowError
from engine.plugins.reasons import described
from engine.plugins.schema import parse_schema, reads_as_number
from engine.work import MAX_OUTPUT_ROWS

_SKIPPED = ("skipped_non_finite", "skipped_non_finite_indices")


class BatchStats:
    kind: ClassVar[str] = "aggregation"
    one_row_per_batch: ClassVar[bool] = True  # (a batch mixing group_by values is an error)

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "value_field", "group_by", "compute_mean")
        self.value_field = o.str_("value_field", required=True)
        self.group_by = o.str_("group_by", "") or None
        self.compute_mean = o.bool_("compute_mean", True)
        outputs = ["count", "sum", "batch_size", *(["mean"] if self.compute_mean else []), *_SKIPPED]
        if self.group_by in outputs:
            raise PluginConfigError(
                "group_by",
                f"'{self.group_by}' is a field of the output, which its value would overwrite; allowed: any field but "
                f"{', '.join(outputs)}",
            )
        self.named_fields = {self.value_field: "value_field"} | ({self.group_by: "group_by"} if self.group_by else {})
        parse_schema(o.raw("schema"))

    def flush(self, rows: list[Row]) -> BatchResult:
        if rows and not any(self.value_field in row for row in rows):
            # A misspelt value_field summed nothing into plausible zeros (a new user's review).
            raise RowError(f"field '{self.value_field}' is in none of the batch's {len(rows)} rows")
        # Text that reads as a number: a CSV column the source's schema does not declare. Left out
        # of the count, every batch's statistics were plausible zeros (a review), and with one
        # real number among them, that number's alone, without a word (another). Any such value
        # fails the batch, as text that reads as no number does not (counted out, as the prior
        # system's batches did).
        texts = [i for i, r in enumerate(rows) if isinstance(v := r.get(self.value_field), str) and reads_as_number(v)]
        if texts:
            found = [r.get(self.value_field) for r in rows]
            numbers = sum(isinstance(v, int | float) and not isinstance(v, bool) for v in found)
            raise RowError(
                f"{len(texts)} of the batch's values of '{self.value_field}' are text that reads as a number (the "
                f"first at position {texts[0]} in the batch; {numbers} are numbers); a CSV column is text unless the "
                f"source's schema declares it ('{self.value_field}: float')"
            )
        total: int | float = 0
        count = 0
        skipped: list[int] = []
        for i, row in enumerate(rows):
            value = row.get(self.value_field)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                skipped.append(i)
                continue
            try:  # an int past a float's range, added to a float or divided for the mean
                total += value
            except OverflowError:
                raise RowError(f"the sum of '{self.value_field}' is out of a float's range") from None
            count += 1
        out: Row = {"count": count, "sum": total, "batch_size": len(rows)}
        if self.compute_mean:
            try:
                out["mean"] = total / count if count else None
            except OverflowError:
                raise RowError(f"the mean of '{self.value_field}' is out of a float's range") from None
        if self.group_by is not None:
            values = {repr(r.get(self.group_by)) for r in rows}
            if len(values) > 1:  # how many, not which: the values are row data (docs/erasure.md)
                raise RowError(f"the batch mixes {len(values)} different values of '{self.group_by}'")
            out[self.group_by] = rows[0].get(self.group_by) if rows else None
        if skipped:
            out[_SKIPPED[0]] = len(skipped)
            out[_SKIPPED[1]] = skipped
        return BatchResult([out])


class BatchReplicate:
    kind: ClassVar[str] = "aggregation"

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "copies_field", "default_copies", "max_copies", "include_copy_index")
        self.copies_field = o.str_("copies_field", "copies")
        self.default_copies = o.int_("default_copies", 1)
        self.max_copies = o.int_("max_copies", 10_000)
        self.include_copy_index = o.bool_("include_copy_index", True)
        if self.max_copies < 1:
            raise PluginConfigError("max_copies", f"must be 1 or more, found {self.max_copies}")
        if not 1 <= self.default_copies <= self.max_copies:
            raise PluginConfigError("default_copies", f"must be between 1 and max_copies ({self.max_copies})")
        # No named_fields: a row without copies_field has default_copies, by design (SETTINGS.md).
        parse_schema(o.raw("schema"))

    def flush(self, rows: list[Row]) -> BatchResult:
        out: list[Row] = []
        rejected: list[tuple[int, str]] = []
        sources: list[list[int]] = []  # each copy is made from its one input row
        asked = sum(self._copies(r) or 0 for r in rows)
        if asked > MAX_OUTPUT_ROWS:  # refused before the copies are made, not after (memory)
            raise RowError(f"the batch asks for {asked} copies, more than the {MAX_OUTPUT_ROWS} one step may make")
        for i, row in enumerate(rows):
            copies = self._copies(row)
            if copies is None:
                asked_for = row.get(self.copies_field)
                found = "one outside that range" if type(asked_for) is int else described(asked_for)
                rejected.append((i, f"'{self.copies_field}' must be an int from 1 to {self.max_copies}, found {found}"))
                continue
            for c in range(copies):
                new = dict(row)
                if self.include_copy_index:
                    new["copy_index"] = c
                out.append(new)
                sources.append([i])
        return BatchResult(out, rejected, sources)

    def _copies(self, row: Row) -> int | None:
        """How many copies `row` asks for, or None when that is not an int from 1 to max_copies."""
        copies = row.get(self.copies_field, self.default_copies)
        if copies is None:
            return self.default_copies
        if type(copies) is int and 1 <= copies <= self.max_copies:
            return copies
        return None
