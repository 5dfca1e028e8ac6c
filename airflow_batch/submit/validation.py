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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
