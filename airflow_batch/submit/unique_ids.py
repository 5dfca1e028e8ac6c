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
from typing import IO

from airflow_batch.submit.validation import Problem

_BUCKETS = 64
#: Ids held before they are spilled to their buckets: one write per bucket, not one per id.
_IDS_HELD = 1 << 16


class UniqueIds:
    """Finds custom_ids used twice across a whole job without holding every id in memory.

    Ids are held a while, then spilled to their hash bucket's file, one a line; their rows go
    to one shared file of 8-byte integers, each bucket's run of them noted by offset. A bucket
    is checked at once: a set of its ids as long as their list means no duplicate (C passes
    only); only a bucket that has one reads its rows back, to name them.
    """

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="airflow-batch-ids-")
        self._files: list[IO[str]] = [
            open(os.path.join(self._dir.name, f"{n:02d}"), "w", encoding="ascii", buffering=1 << 16)  # noqa: SIM115
            for n in range(_BUCKETS)
        ]
        self._rows_file: IO[bytes] = open(os.path.join(self._dir.name, "rows"), "w+b")  # noqa: SIM115
        #: Per bucket, where its rows are in the rows file: (byte offset, how many), in input order.
        self._runs: list[list[tuple[int, int]]] = [[] for _ in range(_BUCKETS)]
        self._ids: list[list[str]] = [[] for _ in range(_BUCKETS)]
        self._rows: list[list[int]] = [[] for _ in range(_BUCKETS)]
        self._room = _IDS_HELD

    def add(self, custom_id: str, row: int) -> None:
        """Note that ``row`` uses ``custom_id`` (a valid id: no newline)."""
        bucket = hash(custom_id) & (_BUCKETS - 1)
        self._ids[bucket].append(custom_id)
        self._rows[bucket].append(row)
        self._room -= 1
        if self._room <= 0:
            self._spill()

    def add_many(self, custom_ids: list[str], rows: list[int]) -> None:
        """Note that each of ``rows`` uses the custom_id at the same position (the pass's hot path)."""
        bucket_ids, bucket_rows = self._ids, self._rows
        for custom_id, row in zip(custom_ids, rows, strict=True):
            bucket = hash(custom_id) & (_BUCKETS - 1)
            bucket_ids[bucket].append(custom_id)
            bucket_rows[bucket].append(row)
        self._room -= len(custom_ids)
        if self._room <= 0:
            self._spill()

    def _spill(self) -> None:
        for handle, ids, rows, runs in zip(self._files, self._ids, self._rows, self._runs, strict=True):
            if ids:
                handle.write("\n".join(ids) + "\n")
                runs.append((self._rows_file.tell(), len(rows)))
                self._rows_file.write(array("q", rows).tobytes())
                ids.clear()
                rows.clear()
        self._room = _IDS_HELD

    def _bucket_rows(self, bucket: int) -> list[int]:
        rows = array("q")
        for offset, count in self._runs[bucket]:
            self._rows_file.seek(offset)
            rows.frombytes(self._rows_file.read(8 * count))
        return rows.tolist()

    def duplicates(self, label: str = "row") -> list[Problem]:
        """Return every row whose custom_id an earlier row already used, in input order.

        One bucket is in memory at a time; the duplicates themselves are few in any input a
        user would submit (each is an error), so they are returned whole.
        """
        self._spill()
        for handle in self._files:
            handle.close()
        found: list[Problem] = []
        for n in range(_BUCKETS):
            with open(os.path.join(self._dir.name, f"{n:02d}"), encoding="ascii") as handle:
                ids = handle.read().split("\n")[:-1]
            if len(set(ids)) == len(ids):
                continue
            first: dict[str, int] = {}
            for custom_id, row in zip(ids, self._bucket_rows(n), strict=True):
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
        return sorted(found, key=lambda problem: problem.row)

    def close(self) -> None:
        """Remove the temporary bucket files."""
        for handle in self._files:
            handle.close()
        self._rows_file.close()
        self._dir.cleanup()
