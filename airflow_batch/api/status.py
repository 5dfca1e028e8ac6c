"""A batch's state as the package's own frozen type, from sync and async clients alike.

Both clients read the API's JSON body and decode it with msgspec into :class:`BatchStatus`
(never into the SDK's pydantic ``MessageBatch``: a first pydantic parse builds validators that
block an event loop for hundreds of milliseconds on a cold triggerer). "Not found" and
"unreadable" are different answers: a 404 raises :class:`~airflow_batch.exceptions.BatchNotFoundError`,
a body that is not a batch raises :class:`~airflow_batch.exceptions.UnreadableAnswerError`.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from airflow_batch.exceptions import UnreadableAnswerError
from airflow_batch.manifest import BatchStatus as BatchRecord
from airflow_batch.manifest import RequestCounts as CountsRecord


class RequestCounts(msgspec.Struct, frozen=True, gc=False):
    """A batch's requests by state; they always sum to its requests."""

    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0

    @property
    def total(self) -> int:
        """Return how many requests the batch holds."""
        return self.processing + self.succeeded + self.errored + self.canceled + self.expired


class BatchStatus(msgspec.Struct, frozen=True, gc=False):
    """One batch as the API last described it (``GET /v1/messages/batches/{id}``, a list item, a
    create's or a cancel's answer)."""

    id: str
    processing_status: str
    request_counts: RequestCounts = RequestCounts()
    created_at: datetime | None = None
    ended_at: datetime | None = None
    expires_at: datetime | None = None
    archived_at: datetime | None = None
    cancel_initiated_at: datetime | None = None
    results_url: str | None = None

    @property
    def ended(self) -> bool:
        """Return whether the batch reached ``ended`` (``canceling`` has not)."""
        return self.processing_status == "ended"

    def record(self) -> BatchRecord:
        """Return what a job keeps of the batch's state (the wait's events, the manifests)."""
        counts = self.request_counts
        return BatchRecord(
            processing_status=self.processing_status,
            request_counts=CountsRecord(
                processing=counts.processing,
                succeeded=counts.succeeded,
                errored=counts.errored,
                canceled=counts.canceled,
                expired=counts.expired,
            ),
            expires_at=_iso(self.expires_at),
            ended_at=_iso(self.ended_at),
        )


class BatchPage(msgspec.Struct, frozen=True, gc=False):
    """One page of the batch list, newest first."""

    data: list[BatchStatus]  # required: a body without it is no batch list, not an empty page
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


_status_decoder = msgspec.json.Decoder(BatchStatus)
_page_decoder = msgspec.json.Decoder(BatchPage)


def decode_status(body: bytes, what: str) -> BatchStatus:
    """Return the batch a response body describes; raise UnreadableAnswerError naming ``what`` if none."""
    try:
        return _status_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _unreadable(what, "a batch", exc) from exc


def convert_status(data: object, what: str) -> BatchStatus:
    """Return the batch a decoded JSON body describes; raise UnreadableAnswerError naming ``what`` if none."""
    try:
        return msgspec.convert(data, BatchStatus)
    except msgspec.ValidationError as exc:
        raise _unreadable(what, "a batch", exc) from exc


def decode_page(body: bytes, what: str) -> BatchPage:
    """Return the page of batches a response body holds; raise UnreadableAnswerError if it is none."""
    try:
        return _page_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _unreadable(what, "a batch list", exc) from exc


def _unreadable(what: str, expected: str, exc: Exception) -> UnreadableAnswerError:
    return UnreadableAnswerError(f"{what}: the API answered something that is not {expected} ({exc})")
