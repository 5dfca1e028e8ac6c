"""Refusals before any spend: a round above its budget, or naming a model the API does not serve.

Both run after the estimate and before the first create; a refusal raises a
:class:`~airflow_batch.exceptions.BeforeSubmitError` whose message says the numbers and the fix,
and the round records it (``round-N/refusal.json``).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from airflow_batch.exceptions import (
    BatchesApiError,
    BudgetExceededError,
    UnknownModelError,
    UnknownModelPriceError,
)

if TYPE_CHECKING:
    from airflow_batch.api import BatchesApi
    from airflow_batch.manifest import CostEstimate
    from airflow_batch.submit.round import SubmitSettings


def check_budget(
    estimate: CostEstimate | None,
    round_number: int,
    settings: SubmitSettings,
    pending: int,
    chunks: int,
    *,
    canary: str = "",
) -> None:
    """Raise before any create when a budget is set and the guarded estimate exceeds what is left.

    The guarded estimate is the upper bound, or the expected figure with
    ``budget_basis="expected"`` (the upper bound when no expected output length is known).
    ``pending`` of the round's ``chunks`` have no batch yet; ``canary`` says what of the
    estimate is the canary's, when it is checked before the canary is sent.
    """
    budget = settings.max_cost_usd
    if not pending or budget is None or estimate is None:
        return
    if not estimate["priced"]:
        raise UnknownModelPriceError(
            f"no price for model(s) {', '.join(estimate['unpriced_models'])} in the price table, so the "
            f"budget max_cost_usd=${budget:.4f} cannot be checked; add them with "
            "prices={model: {'input': .., 'output': ..}}. Nothing was submitted."
        )
    expected = estimate.get("expected_batch_usd")
    guards_expected = settings.guarded_basis == "expected" and expected is not None
    guarded = expected if guards_expected and expected is not None else estimate["batch_usd"]
    left = budget - settings.spent_usd
    if guarded <= left:
        return
    already = chunks - pending
    spent = (
        f"; the job has spent ${settings.spent_usd:.4f} so far, ${max(left, 0):.4f} of the budget is left"
        if settings.spent_usd
        else ""
    )
    if guards_expected:
        figure = (
            f"round {round_number} is expected to cost ${guarded:.4f} at batch prices "
            f"({estimate.get('expected_output_tokens')} output tokens per request, "
            f"{estimate.get('expected_basis')}; up to ${estimate['batch_usd']:.4f} if every request used its "
            "max_tokens)"
        )
        fixes = "Raise max_cost_usd, lower max_tokens or submit fewer requests."
    else:
        figure = (
            f"round {round_number} would cost up to ${guarded:.4f} at batch prices "
            f"(${estimate['standard_usd']:.4f} standard) if every request used its max_tokens"
            + (
                f" (expected: ${expected:.4f}, {estimate.get('expected_basis')})"
                if expected is not None
                else ""
            )
        )
        fixes = (
            "Raise max_cost_usd, lower max_tokens, "
            + (
                "set budget_basis='expected' to guard the expected cost, "
                if expected is not None
                else "set expected_output_tokens with budget_basis='expected', "
            )
            + "or submit fewer requests."
        )
    raise BudgetExceededError(
        f"{figure}{canary}, above the budget max_cost_usd=${budget:.4f}{spent}; {pending} batch(es) not "
        "submitted" + (f" ({already} submitted by an earlier attempt)" if already else "") + f". {fixes}",
        estimate_usd=guarded,
        budget_usd=budget,
        spent_usd=settings.spent_usd,
        basis="expected" if guards_expected else "upper_bound",
    )


def check_models(api: BatchesApi, models: Iterable[str], known: Sequence[str], log: logging.Logger) -> None:
    """Refuse, before any create, models the API does not serve, naming close matches."""
    unknown = []
    for model in sorted(models):
        try:
            if not api.model_exists(model):
                unknown.append(model)
        except BatchesApiError as exc:  # a proxy or platform without the Models API: go on
            log.warning("could not look model %s up (%s); submitting without that check", model, exc)
    if not unknown:
        return
    try:
        candidates = sorted({*api.model_ids(), *known})
    except BatchesApiError:
        candidates = sorted(known)
    described = []
    for model in unknown:
        matches = difflib.get_close_matches(model, candidates, n=3, cutoff=0.6)
        described.append(
            f"{model!r}" + (f" (did you mean {', '.join(map(repr, matches))}?)" if matches else "")
        )
    raise UnknownModelError(
        f"the API does not serve the model(s) {', '.join(described)}: every request would come back "
        "invalid. Fix params.model in the requests or model= of the operator. Nothing was submitted."
    )
