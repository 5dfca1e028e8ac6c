"""RetryFailedOperator: resubmit a round's retryable failures as the next round."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from airflow_batch.finalizing import read_rounds
from airflow_batch.manifest import RoundManifest
from airflow_batch.results import custom_id_decoder, failure_row_decoder
from airflow_batch.storage import as_path, iter_jsonl_lines

if TYPE_CHECKING:
    from airflow.providers.anthropic.hooks.anthropic import AnthropicHook
    from airflow.sdk import Context


def retryable_ids(manifest: RoundManifest) -> set[str]:
    """Return the ``custom_id`` of every failure of a gathered round classified retryable."""
    ids: set[str] = set()
    for part in manifest.get("failures_paths", []):
        for line in iter_jsonl_lines(as_path(part)):
            row = failure_row_decoder.decode(line)
            if row.retryable:
                ids.add(row.custom_id)
    return ids


def original_requests(manifest: RoundManifest, ids: set[str]) -> Iterator[bytes]:
    """Yield, from the round's prepared chunks, the JSONL lines of the requests whose id is in ``ids``.

    The lines are the bytes submitted before, so the retry sends exactly the same requests.
    """
    decode_id = custom_id_decoder.decode
    for record in manifest.get("batches", []):
        for line in iter_jsonl_lines(as_path(record["chunk_path"])):
            if decode_id(line).custom_id in ids:
                yield line


def spent_usd(job_dir: str) -> float:
    """Return what the job's gathered rounds cost at batch prices."""
    return sum(m.get("cost", {}).get("batch_usd", 0.0) for m in read_rounds(as_path(job_dir)))


class RetryFailedOperator(BaseOperator):
    """
    Resubmit the retryable failures of a gathered round as new batches: the next round.

    Reads the failure rows of the previous round, keeps those classified retryable, takes
    their original requests (same ``custom_id``) from that round's prepared chunk files and
    submits them through the same path as the first submission
    (:func:`airflow_batch.submission.submit_round`): batch limits, ledger, idempotent
    re-attach on a retry or clear, and the budget. With ``max_cost_usd`` the budget of the
    round is what is left after the cost of the rounds gathered so far. When nothing is
    retryable the task is skipped, and with it the round's wait and gather.

    Returns the new round's manifest (as the submit does), for the round's ``BatchesSensor``.

    :param manifest: The gathered manifest of the previous round (the gather's ``output``).
    :param conn_id: Anthropic connection id; defaults to the manifest's ``conn_id``.
    :param max_cost_usd: Budget of the whole job in USD at batch prices; ``None`` for none.
    :param submit_settings: Other ``SubmitSettings`` fields (``max_requests_per_batch``,
        ``max_bytes_per_batch``, ``prices``, ``expected_output_tokens``, ...), as given to
        the submit of round 0.
    """

    template_fields: Sequence[str] = ("manifest", "conn_id")
    ui_color = "#fdebd0"

    def __init__(
        self,
        *,
        manifest: RoundManifest | Mapping[str, Any] | Any,
        conn_id: str | None = None,
        max_cost_usd: float | None = None,
        submit_settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.manifest = manifest
        self.conn_id = conn_id
        self.max_cost_usd = max_cost_usd
        self.submit_settings = dict(submit_settings or {})

    @cached_property
    def hook(self) -> AnthropicHook:
        """Return the hook of the connection (the task's, else the manifest's)."""
        from airflow.providers.anthropic.hooks.anthropic import AnthropicHook

        return AnthropicHook(conn_id=self.conn_id or self.manifest["conn_id"])

    def execute(self, context: Context) -> RoundManifest:
        """Submit the next round, or skip when no failure of the previous round is retryable."""
        from airflow_batch.submission import SubmitSettings, submit_round

        previous: RoundManifest = dict(self.manifest)  # type: ignore[assignment]
        ids = retryable_ids(previous)
        if not ids:
            raise AirflowSkipException(
                f"round {previous['round']} has no retryable failure: nothing to resubmit"
            )
        settings = SubmitSettings(**self.submit_settings)
        if self.max_cost_usd is not None:
            left = max(self.max_cost_usd - spent_usd(previous["job_dir"]), 0.0)
            settings = replace(settings, max_cost_usd=left)
        round_number = previous["round"] + 1
        self.log.info(
            "round %d: resubmitting %d retryable failure(s) of round %d",
            round_number,
            len(ids),
            previous["round"],
        )
        return submit_round(
            self.hook.get_conn(),  # type: ignore[arg-type]
            original_requests(previous, ids),
            job=as_path(previous["job_dir"]),
            round_number=round_number,
            conn_id=self.conn_id or previous["conn_id"],
            settings=settings,
            state_store=context.get("task_state_store"),
            log=self.log,  # type: ignore[arg-type]
        )
