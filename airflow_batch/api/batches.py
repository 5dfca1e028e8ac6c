"""Every call a job makes to the API, through one SDK client and the one retry policy.

:class:`BatchesApi` (sync: submit, gather, finalize, a worker's on_kill) and
:class:`AsyncBatchesApi` (async: the wait, in the triggerer or a worker's event loop) wrap
an ``anthropic`` client whose own retries are off (``max_retries=0``): every call goes
through :mod:`airflow_batch.api.retry`, so one policy decides for create, retrieve, list,
cancel, delete, results, count_tokens, models and messages alike. The job's ``betas`` and
``workspace_id`` ride on every call as ``anthropic-beta`` / ``anthropic-workspace-id``
headers (see :func:`job_headers`).

Create keeps the never-pay-twice rule: an error status the API returned (429, 5xx) created
nothing and is retried; a lost response (timeout, dropped connection) may have created the
batch, so ``find_orphan`` is asked first and an orphan it finds is adopted instead of
creating again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from airflow_batch.api import retry
from airflow_batch.api.retry import DEFAULT_POLICY, RetryPolicy
from airflow_batch.api.status import BatchPage, BatchStatus, convert_status, decode_page, decode_status
from airflow_batch.exceptions import BatchesApiError, BatchNotFoundError
from airflow_batch.media import FILES_BETA

if TYPE_CHECKING:
    import anthropic

T = TypeVar("T")

#: Seconds per HTTP call of the wait, instead of the SDK's ten minutes: a status read is small.
STATUS_TIMEOUT = 30.0
#: The API's largest page of the batch list.
LIST_PAGE_SIZE = 1000


def job_headers(betas: Sequence[str] = (), workspace_id: str | None = None) -> dict[str, str]:
    """Return the headers every call of a job carries for its betas and workspace."""
    headers: dict[str, str] = {}
    if betas:
        headers["anthropic-beta"] = ",".join(betas)
    if workspace_id:
        headers["anthropic-workspace-id"] = workspace_id
    return headers


#: Loggers of the SDK's HTTP library that log every request at INFO ("HTTP Request: GET ...").
HTTP_LOGGERS = ("httpx2", "httpx")


def quiet_request_logs() -> None:
    """Keep one line per poll in task and triggerer logs: the HTTP library's per-request INFO lines off.

    Only loggers nobody configured (level NOTSET) are raised to WARNING; a deployment that
    wants the request lines sets ``logging.getLogger("httpx2").setLevel(logging.INFO)``.
    Our own logs say what each call did (retries with their reason, progress per poll).
    """
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


@contextmanager
def _not_found_apart(batch_id: str) -> Iterator[None]:
    """Raise a 404 about ``batch_id`` as BatchNotFoundError: "not found" is an answer of its own."""
    try:
        yield
    except BatchesApiError as exc:
        if exc.status_code == 404 and not isinstance(exc, BatchNotFoundError):
            raise BatchNotFoundError(f"{exc} (batch {batch_id} was not found)") from exc
        raise


@dataclass(frozen=True)
class CreatedBatch:
    """A batch a create made, or the orphan it adopted after losing the response."""

    id: str
    created_at: str | None
    adopted: bool = False


class BatchesApi:
    """The sync calls of a job, each retried by ``policy``."""

    def __init__(
        self,
        client: anthropic.Anthropic,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        quiet_request_logs()
        self.policy = policy
        self.client = client.with_options(max_retries=0, default_headers=dict(headers or {}))
        self._owner = client
        self.betas = [name for name in (headers or {}).get("anthropic-beta", "").split(",") if name]

    def close(self) -> None:
        """Release the client's connections."""
        self._owner.close()

    @property
    def base_url(self) -> str:
        """Return the API's base URL (the emulator's, in tests and local runs)."""
        return str(self.client.base_url)

    def __enter__(self) -> BatchesApi:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], T], what: str) -> T:
        return retry.call(fn, what, self.policy)

    def create(
        self,
        body: Iterable[bytes],
        size: int,
        *,
        what: str,
        find_orphan: Callable[[], str | None] | None = None,
    ) -> CreatedBatch:
        """Create a batch whose body is ``body`` (``size`` bytes, streamed); never create it twice."""
        import anthropic

        def attempt() -> CreatedBatch | object:
            try:
                created: object = self.client.post(
                    "/v1/messages/batches",
                    cast_to=object,
                    content=body,
                    options={"headers": {"Content-Length": str(size), "Content-Type": "application/json"}},
                )
            except anthropic.APIConnectionError:
                # The response was lost: the batch may exist. Adopt it rather than pay twice.
                orphan = find_orphan() if find_orphan is not None else None
                if orphan is not None:
                    return CreatedBatch(orphan, None, adopted=True)
                raise
            return created

        created = self._call(attempt, what)
        if isinstance(created, CreatedBatch):
            return created
        batch = convert_status(created, what)
        return CreatedBatch(batch.id, batch.created_at.isoformat() if batch.created_at else None)

    def retrieve(self, batch_id: str) -> BatchStatus:
        """Return the batch ``batch_id``; raise BatchNotFoundError when the API has none."""
        what = f"retrieve batch {batch_id}"
        batches = self.client.messages.batches
        with _not_found_apart(batch_id):
            body = self._call(lambda: batches.with_raw_response.retrieve(batch_id).read(), what)
        return decode_status(body, what)

    def cancel(self, batch_id: str) -> BatchStatus:
        """Ask the API to cancel ``batch_id``; return the batch as the cancel left it."""
        what = f"cancel batch {batch_id}"
        batches = self.client.messages.batches
        with _not_found_apart(batch_id):
            body = self._call(lambda: batches.with_raw_response.cancel(batch_id).read(), what)
        return decode_status(body, what)

    def delete(self, batch_id: str) -> None:
        """Delete an ended batch and its results from the API."""
        self._call(lambda: self.client.messages.batches.delete(batch_id), f"delete batch {batch_id}")

    def recent_batches(self, *, page_size: int = 100) -> Iterator[BatchStatus]:
        """Yield the workspace's batches newest first, a page at a time (stop iterating to stop paging)."""
        params: dict[str, Any] = {"limit": page_size}
        batches = self.client.messages.batches
        while True:
            body = self._call(lambda: batches.with_raw_response.list(**params).read(), "list batches")
            page = decode_page(body, "list batches")
            yield from page.data
            if not page.has_more or not page.last_id:
                return
            params["after_id"] = page.last_id

    def download_results(self, batch_id: str, consume: Callable[[Iterator[bytes]], T]) -> T:
        """Return ``consume(chunks of the results stream)``; a cut stream is downloaded again.

        ``consume`` must start from scratch each time it is called: a retry re-runs it on a
        new download from the first byte.
        """

        def attempt() -> T:
            with self.client.messages.batches.with_streaming_response.results(batch_id) as response:
                # The body as it arrives: re-chunking it here (``iter_bytes(size)``) copied every
                # byte twice more; the consumer gathers the reads into blocks itself.
                return consume(response.iter_bytes())

        return self._call(attempt, f"download the results of batch {batch_id}")

    def model_exists(self, model: str) -> bool:
        """Return whether the API serves ``model`` (``GET /v1/models/{model}``: 404 means no)."""
        try:
            self._call(lambda: self.client.models.retrieve(model), f"look up model {model!r}")
        except BatchesApiError as exc:
            if exc.status_code == 404:
                return False
            raise
        return True

    def model_ids(self) -> list[str]:
        """Return the ids of the models the API lists (its first page of 1,000)."""
        page = self._call(lambda: self.client.models.list(limit=1000), "list models")
        return [model.id for model in page.data]

    def count_tokens(self, body: Mapping[str, Any]) -> int:
        """Return the API's input token count of a Messages request body."""
        return self._call(lambda: self.client.messages.count_tokens(**body).input_tokens, "count_tokens")

    def upload_file(self, name: str, data: bytes, media_type: str) -> str:
        """Upload a file with the Files API; return its ``file_id``.

        A lost response may have stored the file: the retry uploads it again, and the first copy
        is left unreferenced (the Files API has no idempotency key); it costs storage, not tokens.
        """
        return self._call(
            lambda: self.client.beta.files.upload(file=(name, data, media_type), betas=self._files_betas).id,
            f"upload file {name!r}",
        )

    def delete_file(self, file_id: str) -> bool:
        """Delete an uploaded file; return False when it was already gone (404)."""
        try:
            self._call(
                lambda: self.client.beta.files.delete(file_id, betas=self._files_betas),
                f"delete file {file_id}",
            )
        except BatchesApiError as exc:
            if exc.status_code == 404:
                return False
            raise
        return True

    def file_ids(self) -> set[str]:
        """Return the ids of the workspace's uploaded files (every page of the list)."""
        ids: set[str] = set()
        params: dict[str, Any] = {"limit": LIST_PAGE_SIZE, "betas": self._files_betas}
        while True:
            page = self._call(partial(self.client.beta.files.list, **params), "list files")
            ids.update(item.id for item in page.data)
            if not page.next_page:
                return ids
            params["page"] = page.next_page

    @property
    def _files_betas(self) -> list[Any]:
        """The job's betas and the Files API's: a files call sends them all in one header."""
        return [*dict.fromkeys([*self.betas, FILES_BETA])]

    def message(self, params: Mapping[str, Any], *, what: str = "send a message") -> dict[str, Any]:
        """Return the Message answering ``params`` (``POST /v1/messages``, standard price), as decoded JSON.

        Sent as the raw body, not through ``messages.create``: the SDK refuses a non-streaming
        call whose ``max_tokens`` could take longer than its timeout, which a batch request's
        may. Decoded with msgspec, like every other body of the job.
        """

        def attempt() -> dict[str, Any]:
            raw = self.client.post("/v1/messages", body=dict(params), cast_to=object)
            if not isinstance(raw, dict):
                raise BatchesApiError(f"{what}: the API answered {type(raw).__name__}, not a Message")
            return raw

        return self._call(attempt, what)


class AsyncBatchesApi:
    """The async calls of the wait, each retried by ``policy`` without blocking the loop."""

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        quiet_request_logs()
        self.policy = policy
        self.client = client.with_options(
            max_retries=0, timeout=STATUS_TIMEOUT, default_headers=dict(headers or {})
        )
        self._owner = client

    @property
    def base_url(self) -> str:
        """Return the API's base URL (the emulator's, in tests and local runs)."""
        return str(self.client.base_url)

    async def close(self) -> None:
        """Release the client's connections."""
        await self._owner.close()

    async def retrieve(self, batch_id: str) -> BatchStatus:
        """Return the batch ``batch_id``; raise BatchNotFoundError when the API has none."""
        what = f"retrieve batch {batch_id}"
        batches = self.client.messages.batches
        with _not_found_apart(batch_id):
            body = await self._body(lambda: batches.with_raw_response.retrieve(batch_id), what)
        return decode_status(body, what)

    async def cancel(self, batch_id: str) -> BatchStatus:
        """Ask the API to cancel ``batch_id``; return the batch as the cancel left it."""
        what = f"cancel batch {batch_id}"
        batches = self.client.messages.batches
        with _not_found_apart(batch_id):
            body = await self._body(lambda: batches.with_raw_response.cancel(batch_id), what)
        return decode_status(body, what)

    async def _body(self, send: Callable[[], Awaitable[Any]], what: str) -> bytes:
        """Return the body of ``send()``'s raw response, retried by the policy (decoded by the caller)."""

        async def attempt() -> bytes:
            raw = await send()
            return bytes(await raw.read())

        return await retry.acall(attempt, what, self.policy)

    async def list_page(self, after_id: str | None) -> BatchPage:
        """Return one page of the batch list (newest first, 1,000 batches)."""
        params: dict[str, Any] = {"limit": LIST_PAGE_SIZE, **({"after_id": after_id} if after_id else {})}
        batches = self.client.messages.batches
        body = await self._body(lambda: batches.with_raw_response.list(**params), "list batches")
        return decode_page(body, "list batches")
