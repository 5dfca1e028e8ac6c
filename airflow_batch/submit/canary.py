"""The canary: a few of a round's requests answered at once, at standard price, before any batch.

A batch can take hours to come back; a wrong prompt or schema should fail in a minute. With
``canary=N`` the submit holds back the first N requests it would send (in input order: the same
input always gives the same canary; requests answered from the answer store are not among them,
and a store hit found unusable after the pass fills a place left over),
sends each through the Messages API (``POST /v1/messages``, through the job's one retry policy),
and judges each answer exactly as gather judges a batch's (:func:`airflow_batch.rows.gathered.answer_row`:
schema-valid ``output`` with an output schema, no refusal or paused turn) and, beyond that, refuses
an answer cut at ``max_tokens`` or, without a schema, one with no text. When more than
``max_failure_rate`` of them are unusable the submit fails with :class:`CanaryFailedError`,
quoting the bad examples, before any batch is created.

Otherwise the usable answers are kept as the round's results (rows in ``round-N/reused.jsonl``
marked ``reused_from: {"canary": true, ...}``, not sent again in a batch), the unusable ones are
sent in the batch like the rest, and the canary's cost at standard prices is part of the round's
cost and of the budget. Its answers' output length is the estimate's expected figure when the user
gave none (``expected_basis`` ``"canary"``).

Spent once. The budget check before the canary uses the round's own estimate (one calibration,
kept on the tally), so a round is never refused after its canary was paid for on a figure the
canary's check did not see. The round's ledger records the canary before its first request is
sent (:func:`canary_intent`) and its outcome right after: a re-run over the same input never
sends it again; it re-raises a failure that still fails, or sends the canary's requests in the
batch when their answers were not kept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from airflow_batch.exceptions import BatchesApiError, CanaryFailedError
from airflow_batch.manifest import CanaryRecord, CostEstimate, CostFigures, Usage, empty_usage, sum_usages
from airflow_batch.rows.block import BlockSettings
from airflow_batch.rows.contract import FailureRow, ResultRow, row_encoder, stored_answer, to_usage
from airflow_batch.rows.gathered import answer_row
from airflow_batch.rows.lines import LineUsage, line_with_content_decoder
from airflow_batch.rows.tally import manifest_usage
from airflow_batch.rules.costs import PriceTable, usage_key
from airflow_batch.rules.params import loads

if TYPE_CHECKING:
    from airflow_batch.api import BatchesApi
    from airflow_batch.rules.validator import Validator
    from airflow_batch.submit.estimate import TokenTally
    from airflow_batch.submit.ledger import Ledger

#: Failed examples quoted in the error and kept in the manifest.
EXAMPLES = 5
#: Characters of an answer's text quoted in an example.
QUOTE_CHARS = 160
MAX_CANARY = 1_000


@dataclass(frozen=True)
class CanarySettings:
    """How many requests the canary sends, and the share of them that may be unusable."""

    size: int
    max_failure_rate: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise ValueError(f"canary must be a whole number of requests, got {self.size!r}")
        if not 1 <= self.size <= MAX_CANARY:
            raise ValueError(f"canary must be between 1 and {MAX_CANARY:,} requests, got {self.size}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError(f"canary_max_failure_rate must be between 0 and 1, got {self.max_failure_rate}")


@dataclass
class HeldRequest:
    """A request the pass held back for the canary: as it would be sent, and what its rows need."""

    line: bytes  # the request as a batch would carry it
    inputs: bytes  # {"custom_id", "row"[, "input"]}
    fingerprint: bytes
    count: Callable[[TokenTally], None]  # counts it in an estimate, if it is sent after all

    @property
    def custom_id(self) -> str:
        """Return the request's custom_id."""
        return str(_custom_id(self.inputs).custom_id)


class _CustomId(msgspec.Struct, gc=False):
    custom_id: str


_custom_id = msgspec.json.Decoder(_CustomId).decode


@dataclass
class CanaryAnswer:
    """One canary request and what became of it: its row (a result, or why it is unusable)."""

    held: HeldRequest
    message_id: str | None
    row: ResultRow | None  # the usable answer's row
    problem: str | None  # why the answer is unusable (None: usable)
    usage: Usage | None
    model: str | None


@dataclass
class CanaryOutcome:
    """Every canary answer, their usage and what they cost at standard prices."""

    answers: list[CanaryAnswer]
    cost: CostFigures
    usage_by_model: dict[str, Usage] = field(default_factory=dict)

    @property
    def answered(self) -> list[CanaryAnswer]:
        """Return the usable answers (kept as results)."""
        return [answer for answer in self.answers if answer.problem is None]

    @property
    def failed(self) -> list[CanaryAnswer]:
        """Return the unusable answers (their requests go in the batch)."""
        return [answer for answer in self.answers if answer.problem is not None]

    def output_tokens_per_answer(self) -> int | None:
        """Return the output tokens per answer the canary saw (rounded up), None without any answer."""
        paid = [answer.usage for answer in self.answers if answer.usage is not None]
        if not paid:
            return None
        return max(1, math.ceil(sum(usage["output_tokens"] for usage in paid) / len(paid)))

    def examples(self) -> list[dict[str, Any]]:
        """Return the first failed requests: custom_id and why."""
        return [{"custom_id": a.held.custom_id, "problem": a.problem} for a in self.failed[:EXAMPLES]]

    def record(self) -> CanaryRecord:
        """Return what the manifest keeps of the canary."""
        return CanaryRecord(
            requests=len(self.answers),
            answered=len(self.answered),
            failed=len(self.failed),
            examples=self.examples(),
            usage=sum_usages(self.usage_by_model.values()),
            cost=self.cost,
            output_tokens_per_answer=self.output_tokens_per_answer(),
        )


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= QUOTE_CHARS else flat[:QUOTE_CHARS] + "…")


def judge(
    custom_id: str, message: Mapping[str, Any], settings: BlockSettings
) -> tuple[ResultRow | None, str | None]:
    """Return (the answer's result row, None) or (None, why the answer is unusable)."""
    raw = row_encoder.encode({"custom_id": custom_id, "result": {"type": "succeeded", "message": message}})
    try:
        line = line_with_content_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        return None, f"the API answered something that is not a Message ({exc})"
    row = answer_row(line, settings)
    if isinstance(row, FailureRow):
        text = msgspec.json.decode(row.text) if isinstance(row.text, msgspec.Raw) else ""
        return None, f"{row.result_type}: {row.message}" + (f"; text {_quote(text)}" if text else "")
    text = msgspec.json.decode(row.text)
    if row.stop_reason == "max_tokens":
        return None, (
            f"cut at max_tokens ({row.usage.output_tokens:,} output tokens): raise max_tokens"
            + (f"; text {_quote(text)}" if text else "")
        )
    if settings.validator is None and not text.strip() and row.tool_calls is msgspec.UNSET:
        return None, "the answer has no text"
    return row, None


def run_canary(
    api: BatchesApi,
    held: list[HeldRequest],
    *,
    round_number: int,
    validator: Validator | None,
    table: PriceTable,
    log: logging.Logger,
    include_content: bool = False,
) -> CanaryOutcome:
    """Send every held request through the Messages API and judge its answer.

    A request the API refuses (a permanent error: 400, 404...) is an unusable answer quoting
    the error; a transient fault that outlasts the retry budget is raised (nothing is judged).
    """
    settings = BlockSettings("", round_number, include_content=include_content, validator=validator)
    answers: list[CanaryAnswer] = []
    usage_by_key: dict[str, Usage] = {}
    for request in held:
        custom_id = request.custom_id
        params = loads(request.line)["params"]
        try:
            message = api.message(params, what=f"send canary request {custom_id!r}")
        except BatchesApiError as exc:
            if exc.transient:
                raise
            answers.append(
                CanaryAnswer(request, None, None, f"the API refused the request: {exc}", None, None)
            )
            continue
        row, problem = judge(custom_id, message, settings)
        usage = _usage(message)
        model = str(message.get("model") or params.get("model"))
        key = usage_key(model)
        usage_by_key[key] = sum_usages([usage_by_key.get(key, {}), usage])
        answers.append(CanaryAnswer(request, message.get("id"), row, problem, usage, model))
    figures = table.cost(usage_by_key)
    # What the canary paid is the standard price: both figures are it.
    cost = CostFigures(
        batch_usd=figures["standard_usd"],
        standard_usd=figures["standard_usd"],
        priced=figures["priced"],
        unpriced_models=figures["unpriced_models"],
    )
    outcome = CanaryOutcome(answers, cost, usage_by_key)
    log.info(
        "canary: %d of %d answer(s) usable; $%.4f at standard prices",
        len(outcome.answered),
        len(answers),
        cost["standard_usd"],
    )
    return outcome


def check_canary(outcome: CanaryOutcome, max_failure_rate: float) -> None:
    """Raise :class:`CanaryFailedError` when more than ``max_failure_rate`` of the answers are unusable."""
    failed, total = len(outcome.failed), len(outcome.answers)
    if not total or failed / total <= max_failure_rate:
        return
    lines = [
        f"canary: {failed} of {total} answer(s) unusable ({failed / total:.0%}, above "
        f"canary_max_failure_rate={max_failure_rate:.0%}); no batch was created. The canary cost "
        f"${outcome.cost['standard_usd']:.4f} at standard prices. Failed requests:"
    ]
    lines += [f"  - {example['custom_id']}: {example['problem']}" for example in outcome.examples()]
    if failed > EXAMPLES:
        lines.append(f"  - and {failed - EXAMPLES} more")
    lines.append(
        "Fix the prompt, the output schema or max_tokens (or raise canary_max_failure_rate) and re-run."
    )
    raise CanaryFailedError(
        "\n".join(lines), examples=outcome.examples(), cost_usd=outcome.cost["standard_usd"]
    )


def canary_intent(requests: int, estimate: CostEstimate) -> CanaryRecord:
    """Return the ledger's record of a canary about to be sent: its size and what it may cost.

    Saved before the first request goes out, so a re-run (a retry, a worker that died mid-canary)
    finds it and never sends the canary again; until the outcome replaces it, its cost counts
    as its estimate at standard prices (an upper bound: every answer at its ``max_tokens``).
    """
    return CanaryRecord(
        requests=requests,
        answered=0,
        failed=0,
        examples=[],
        usage=empty_usage(),
        cost=CostFigures(
            batch_usd=estimate["standard_usd"],
            standard_usd=estimate["standard_usd"],
            priced=estimate["priced"],
            unpriced_models=estimate["unpriced_models"],
        ),
        output_tokens_per_answer=None,
    )


def canary_only(ledger: Ledger) -> bool:
    """Return whether a round's ledger records a canary and nothing else (no chunk, batch or intent)."""
    return ledger.canary is not None and not (ledger.chunks or ledger.batches or ledger.intents)


def check_recorded_canary(record: CanaryRecord, max_failure_rate: float) -> None:
    """Raise :class:`CanaryFailedError` again when an earlier attempt's canary failed and still would."""
    judged = record["answered"] + record["failed"]
    if not judged or record["failed"] / judged <= max_failure_rate:
        return
    lines = [
        f"canary: an earlier attempt of this round sent the canary over the same input and found "
        f"{record['failed']} of {judged} answer(s) unusable (above canary_max_failure_rate="
        f"{max_failure_rate:.0%}); it is not sent again and no batch was created. Failed requests:"
    ]
    lines += [f"  - {example['custom_id']}: {example['problem']}" for example in record["examples"]]
    lines.append(
        "Fix the prompt, the output schema or max_tokens (a changed input runs a new canary), or raise "
        "canary_max_failure_rate (or turn the canary off) to submit this input as it is."
    )
    raise CanaryFailedError("\n".join(lines), examples=record["examples"], cost_usd=0.0)


def canary_answer_parts(answer: CanaryAnswer) -> tuple[bytes, bytes]:
    """Return (answer JSON, usage JSON) of a usable canary answer, for its row and the answer store."""
    assert answer.row is not None
    return stored_answer(answer.row), row_encoder.encode(answer.row.usage)


def canary_source(answer: CanaryAnswer, job: str, round_number: int, written_at: str) -> bytes:
    """Return the ``reused_from`` of a canary answer's row: the canary's message, job and round."""
    return row_encoder.encode(
        {
            "canary": True,
            "message_id": answer.message_id,
            "job_dir": job,
            "round": round_number,
            "written_at": written_at,
        }
    )


def _usage(message: Mapping[str, Any]) -> Usage:
    try:
        line_usage = msgspec.convert(message.get("usage") or {}, LineUsage)
    except msgspec.ValidationError:
        line_usage = LineUsage()
    return manifest_usage(to_usage(line_usage))
