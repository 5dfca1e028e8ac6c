"""The checks every Message Batches request must pass before any spend, and the report of failures.

A request is ``{"custom_id": str, "params": {...Messages API body...}}``. :func:`check_request`
returns the first rule a request breaks (or None): the structure the API accepts
(:mod:`airflow_batch.rules.params`, shared with the emulator's create validation), what a batch
refuses, the model's limits where the model table knows them (``max_tokens`` above the
model's batch maximum), and the model's rules (:mod:`airflow_batch.rules.models`: sampling
parameters and thinking forms). A bad row fails the task before anything is spent.

A :class:`ProblemReport` collects the invalid rows in bounded memory and reads as one line
per distinct rule: how many rows break it, the first few (``line 4`` of a JSONL file, blank
lines counted as an editor counts them, or ``row 4`` of a list, both 1-based) and the fix.

:class:`UniqueIds` is the one check that needs every row at once: a ``custom_id`` used twice
across the whole job, found without holding every id in memory (ids are spilled to 64 hash
buckets in a temporary directory and each bucket is checked on its own at the end, so memory
stays at 1/64 of the ids).
"""

from __future__ import annotations

import os
import re
import tempfile
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from airflow_batch.rules.models import SAMPLING_PARAMETERS, model_problem
from airflow_batch.rules.params import batch_rules, check_custom_id, convert_request, thinking_type

if TYPE_CHECKING:
    from airflow_batch.rules.params import Params, Request

__all__ = [
    "CUSTOM_ID_HINT",
    "MAX_BYTES_PER_BATCH",
    "MAX_REQUESTS_PER_BATCH",
    "InvalidRow",
    "Problem",
    "ProblemReport",
    "UniqueIds",
    "check_custom_id",
    "check_params",
    "check_request",
    "checked_request",
    "custom_id_of",
]

MAX_REQUESTS_PER_BATCH = 100_000
#: The API limit is 256 MB of request body per batch create; we stay a little under it.
MAX_BYTES_PER_BATCH = 256_000_000 - 1_000_000

_REQUEST_KEYS = frozenset(("custom_id", "params"))
#: Parts of a rule that vary from row to row; a rule without them groups the problems.
_SPECIFICS = re.compile(r"\[\d+\]|'[^']*'|\d[\d,]*")
CUSTOM_ID_HINT = (
    "give each record an id made of letters, digits, _ and - (at most 64), or pass custom_id_from= "
    "to build a valid, unique id from any key (the key is kept as a column of the results)"
)

#: ``model -> the most max_tokens it takes in a batch`` (None: not known, not checked).
MaxOutputTokens = Callable[[str], "int | None"]


@dataclass(frozen=True)
class InvalidRow:
    """A row that could not be turned into a request; it is reported, never submitted."""

    rule: str
    custom_id: str | None = None
    hint: str = ""
    #: The row's input is gone (a file listed, then not found): it is always one ``invalid_input``
    #: failure row, and never refuses the round, with or without ``skip_invalid``.
    failed: bool = False


@dataclass(frozen=True)
class Problem:
    """One invalid input row: where it is, its custom_id when it has one, the rule it breaks, the fix."""

    row: int
    custom_id: str | None
    rule: str
    hint: str = ""
    label: str = "row"

    @property
    def kind(self) -> str:
        """Return the rule with the row's own values left out: what groups problems in a report."""
        return _SPECIFICS.sub("…", self.rule)

    def where(self) -> str:
        """Return ``line 4 (custom_id 'a b')``."""
        cid = f"custom_id {self.custom_id!r}" if self.custom_id is not None else "no custom_id"
        return f"{self.label} {self.row} ({cid})"

    def __str__(self) -> str:
        return f"{self.where()}: {self.rule}"


@dataclass
class _Group:
    first: Problem
    count: int = 0
    examples: list[Problem] = field(default_factory=list)


@dataclass
class ProblemReport:
    """The invalid rows of an input, grouped by rule, in bounded memory."""

    examples_per_rule: int = 5
    max_rules: int = 20
    total: int = 0
    groups: dict[str, _Group] = field(default_factory=dict)
    other: int = 0

    def add(self, problem: Problem) -> None:
        """Count ``problem`` under its rule (the first few of each rule are kept as examples)."""
        self.total += 1
        group = self.groups.get(problem.kind)
        if group is None:
            if len(self.groups) >= self.max_rules:
                self.other += 1
                return
            group = self.groups[problem.kind] = _Group(problem)
        group.count += 1
        if len(group.examples) < self.examples_per_rule:
            group.examples.append(problem)

    def first(self) -> list[Problem]:
        """Return the example problems, in input order."""
        return sorted((p for g in self.groups.values() for p in g.examples), key=lambda p: p.row)

    def message(self, rows: int) -> str:
        """Return the error message: one line per rule with its count, first rows and fix."""
        lines = [
            f"{self.total:,} invalid request(s) among {rows:,} row(s); nothing was submitted. "
            "Fix these rows and re-run:"
        ]
        for group in sorted(self.groups.values(), key=lambda g: g.first.row):
            if group.count == 1:
                lines.append(f"  - {group.first}")
            else:
                shown = ", ".join(problem.where() for problem in group.examples)
                left = group.count - len(group.examples)
                more = f" and {left:,} more" if left else ""
                lines.append(f"  - {group.first.rule} — {group.count:,} rows: {shown}{more}")
            if group.first.hint:
                lines.append(f"    fix: {group.first.hint}")
        if self.other:
            lines.append(f"  - and {self.other:,} row(s) breaking other rules")
        return "\n".join(lines)


def custom_id_of(request: Any) -> str | None:
    """Return the request's custom_id if it is a string, else None (for error messages)."""
    if isinstance(request, Mapping):
        value = request.get("custom_id")
        if isinstance(value, str):
            return value
    return None


SYSTEM_ROLE_HINT = (
    "messages take the roles user and assistant: put a system prompt in params.system (or system=)"
)


def hint_for(rule: str) -> str:
    """Return the fix to suggest for a rule, or ""."""
    if rule.startswith("custom_id "):
        return CUSTOM_ID_HINT
    if ".role" in rule and "'system'" in rule:
        return SYSTEM_ROLE_HINT
    return ""


def check_params(
    params: Params, *, lenient: bool = False, max_output_tokens: MaxOutputTokens | None = None
) -> str | None:
    """Return the first batch rule typed ``params`` break, with the model's limits when known."""
    limit = max_output_tokens(params.model) if max_output_tokens is not None else None
    return batch_rules(params, lenient=lenient, max_output_tokens=limit) or model_problem(
        params.model,
        {name: value for name in SAMPLING_PARAMETERS if (value := getattr(params, name)) is not None},
        thinking_type(params.thinking),
    )


def check_request(
    request: Any, *, lenient: bool = False, max_output_tokens: MaxOutputTokens | None = None
) -> str | None:
    """Return the first rule ``request`` breaks as a Message Batches request, or None if valid.

    Uniqueness of the custom_id and the size of the batch are checked by the caller, which
    sees the whole job. ``lenient`` (a job with beta headers) lets unknown parameters and tool
    types pass.
    """
    return checked_request(request, lenient=lenient, max_output_tokens=max_output_tokens)[0]


def checked_request(
    request: Any, *, lenient: bool = False, max_output_tokens: MaxOutputTokens | None = None
) -> tuple[str | None, Request | None]:
    """Return (the first rule ``request`` breaks or None, the typed request when it has the API's shape)."""
    if not isinstance(request, Mapping):
        return "a request must be a JSON object with custom_id and params", None
    if "custom_id" not in request:
        return "custom_id is missing", None
    problem = check_custom_id(request["custom_id"])
    if problem:
        return problem, None
    extra = request.keys() - _REQUEST_KEYS
    if extra:
        return f"unknown field {sorted(extra)[0]!r}: a request has only custom_id and params", None
    if not isinstance(request.get("params"), Mapping):
        return "params must be an object (a Messages API request body)", None
    try:
        typed = convert_request(request, lenient=lenient)
    except ValueError as exc:
        return str(exc), None
    return check_params(typed.params, lenient=lenient, max_output_tokens=max_output_tokens), typed


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
