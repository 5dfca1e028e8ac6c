"""Which custom_ids a whole job uses twice, found without holding every id in memory.

Checking that every ``custom_id`` is unique across the whole job is the one check of the submit
pass that needs to see every id; ids are spilled to 64 hash buckets in a temporary directory and
each bucket is checked on its own at the end, so memory stays at 1/64 of the ids instead of all
of them.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Iterator
from typing import IO

from airflow_batch.submit.validation import Problem

_BUCKETS = 64
#: Ids held before they are spilled to their buckets: one write per bucket, not one per id.
_IDS_HELD = 1 << 16


class UniqueIds:
    """Finds custom_ids used twice across a whole job without holding every id in memory.

    Ids are held a while, then spilled to their hash bucket's file, one a line, and, in input
    order with their rows, to one more file (rows as 8-byte integers). A bucket is checked at
    once: a set of its ids as long as their list means no duplicate (C passes only). Only when a
    bucket has one is the input-order file read back, to name the rows: the hot path sorts each
    id into its bucket and nothing more.
    """

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="airflow-batch-ids-")
        self._files: list[IO[str]] = [
            open(self._path(f"{n:02d}"), "w", encoding="ascii", buffering=1 << 16)  # noqa: SIM115
            for n in range(_BUCKETS)
        ]
        self._in_order: IO[str] = open(self._path("ids"), "w", encoding="ascii", buffering=1 << 16)  # noqa: SIM115
        self._rows_file: IO[bytes] = open(self._path("rows"), "wb")  # noqa: SIM115
        self._ids: list[list[str]] = [[] for _ in range(_BUCKETS)]
        self._to_bucket = [ids.append for ids in self._ids]
        self._order: list[str] = []
        self._rows: array[int] = array("q")

    def _path(self, name: str) -> str:
        return os.path.join(self._dir.name, name)

    def add_many(self, custom_ids: list[str], rows: list[int]) -> None:
        """Note that each of ``rows`` uses the custom_id at the same position (valid ids: no newline)."""
        to_bucket = self._to_bucket
        for custom_id in custom_ids:
            to_bucket[hash(custom_id) & (_BUCKETS - 1)](custom_id)
        self._order += custom_ids
        self._rows.extend(rows)
        if len(self._order) >= _IDS_HELD:
            self._spill()

    def _spill(self) -> None:
        for handle, ids in zip(self._files, self._ids, strict=True):
            if ids:
                handle.write("\n".join(ids) + "\n")
                ids.clear()
        if self._order:
            self._in_order.write("\n".join(self._order) + "\n")
            self._rows_file.write(self._rows.tobytes())
            self._order.clear()
            del self._rows[:]

    def duplicates(self, label: str = "row") -> list[Problem]:
        """Return every row whose custom_id an earlier row already used, in input order.

        One bucket is in memory at a time; the duplicates themselves are few in any input a
        user would submit (each is an error), so they are returned whole.
        """
        self._spill()
        self._close_files()
        used_twice: set[str] = set()
        for n in range(_BUCKETS):
            with open(self._path(f"{n:02d}"), encoding="ascii") as handle:
                ids = handle.read().split("\n")[:-1]
            if len(set(ids)) != len(ids):
                seen: set[str] = set()
                for custom_id in ids:
                    if custom_id in seen:
                        used_twice.add(custom_id)
                    seen.add(custom_id)
        if not used_twice:
            return []
        found: list[Problem] = []
        first: dict[str, int] = {}
        for custom_id, row in self._rows_in_order():
            if custom_id not in used_twice:
                continue
            earlier = first.setdefault(custom_id, row)
            if earlier != row:
                found.append(
                    Problem(
                        row,
                        custom_id,
                        f"custom_id is already used by {label} {earlier}; custom_id must be unique "
                        "across the whole job",
                        hint="give each record a unique id, or pass custom_id_from= to build one",
                        label=label,
                    )
                )
        return found

    def _rows_in_order(self) -> Iterator[tuple[str, int]]:
        """Yield every (custom_id, row) noted, in input order, a block of rows at a time."""
        with open(self._path("ids"), encoding="ascii") as ids, open(self._path("rows"), "rb") as rows:
            block = array("q")
            at = 0
            for line in ids:
                if at == len(block):
                    block = array("q", rows.read(8 * _IDS_HELD))
                    at = 0
                yield line[:-1], block[at]
                at += 1

    def _close_files(self) -> None:
        for handle in self._files:
            handle.close()
        self._in_order.close()
        self._rows_file.close()

    def close(self) -> None:
        """Remove the temporary bucket files."""
        self._close_files()
        self._dir.cleanup()
