"""The emulator's HTTP surface: the Message Batches API routes and the ``/_emulator`` admin routes.

Built on Starlette (the ASGI core of FastAPI) rather than FastAPI itself: the routes
parse bodies with msgspec and need none of FastAPI's pydantic layer, and importing it
would more than double the emulator's start time, which every test fixture pays.

Every API call (``/v1/...``) goes through ``api_guard``: added latency, the API key
check (``x-api-key`` or ``Authorization: Bearer``, any non-empty key), the
``anthropic-version`` check, the ``anthropic-beta`` check (names the SDK knows pass and are
logged with the call and the caller's workspace, see ``betas``), then the configured HTTP
faults. A fault is decided before any work, so a faulted create stores nothing. Every
response carries a ``request-id`` header (and echoes ``anthropic-workspace-id`` when the
request sent one); every error has the API's error body with the same id.

Workspaces: a batch belongs to the workspace named by the create call's
``anthropic-workspace-id`` header (none: the default workspace). List, retrieve, results,
cancel and delete see only the caller's workspace's batches; another workspace's batch id is
a 404. Creates first pass the organisation's limits (``limits``: spend limit, create rate,
processing queue), all workspaces together.

``POST /v1/messages`` answers one request at the standard API (``service_tier: "standard"``)
with the same synthetic answers, usage and fault settings as batch results; it does not
stream (``stream: true`` is a 400 saying so).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import math
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from airflow_batch.emulator import models
from airflow_batch.emulator.betas import beta_names, unsupported_beta
from airflow_batch.emulator.faults import DROP, LOST, ConfigError, EmulatorConfig, FaultInjector
from airflow_batch.emulator.files import FileStore, files_scope, metadata
from airflow_batch.emulator.limits import Refusal, queue_refusal, rate_refusal, spend_limit_refusal
from airflow_batch.emulator.processing import archived_at, canceled, new_schedule, repaced, restarted, rfc3339
from airflow_batch.emulator.responses import (
    Answerer,
    Behaviours,
    error_message,
    injected_error,
    outcome_draw,
    prompt_problem,
    request_problem,
)
from airflow_batch.emulator.store import BatchRecord, BatchStore
from airflow_batch.emulator.tokenizer import tokenizer_for
from airflow_batch.emulator.validation import (
    CountTokensBody,
    InvalidBatch,
    Params,
    decode_body,
    parse_create_body,
    parse_message_body,
)
from airflow_batch.media import FILES_BETA

ERROR_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_FAULT_MESSAGES = {
    429: "Number of requests has exceeded your rate limit (injected by the emulator)",
    500: "Internal server error (injected by the emulator)",
    529: "Overloaded (injected by the emulator)",
}
STATUS_BY_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
MESSAGES_MAX_BODY_BYTES = 32 * 1024 * 1024
"""The Messages API's request size limit."""
_BATCH_PATH = re.compile(r"^/v1/messages/batches/(?P<id>[^/]+)")
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_WORKSPACE_HEADER = b"anthropic-workspace-id"
_encode = msgspec.json.Encoder().encode
log = logging.getLogger("airflow_batch.emulator")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ApiError(Exception):
    """An API error response: status, error type, message and extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type or ERROR_TYPES_BY_STATUS.get(status, "api_error")
        self.message = message
        self.headers = headers or {}
        self.details = details

    @classmethod
    def from_refusal(cls, refusal: Refusal) -> ApiError:
        """Return the 429 ``rate_limit_error`` of a refusal by the organisation's limits."""
        return cls(429, refusal.message, headers=refusal.headers, details=refusal.details)


class _ResponseCut(Exception):
    """Raised inside a streamed response to drop the connection (the ``drop`` and ``lost`` faults)."""


class RequestIdMiddleware:
    """Gives every request a ``req_…`` id, kept in ``request.state`` and sent as ``request-id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = request_id
        extra = [(b"request-id", request_id.encode())]
        extra += [(name, value) for name, value in scope["headers"] if name == _WORKSPACE_HEADER][:1]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_id)


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(content), status_code=status, media_type="application/json", headers=headers)


def _error_response(request: Request, error: ApiError) -> Response:
    request_id = getattr(request.state, "request_id", "req_" + secrets.token_hex(12))
    detail: dict[str, Any] = {"type": error.error_type, "message": error.message}
    if error.details is not None:
        detail["details"] = error.details
    body = {"type": "error", "error": detail, "request_id": request_id}
    return _json(body, error.status, error.headers)


def _behaviours(config: EmulatorConfig) -> Behaviours:
    return Behaviours(
        refusal_rate=config.refusal_rate,
        pause_turn_rate=config.pause_turn_rate,
        invalid_output_rate=config.invalid_output_rate,
    )


class Emulator:
    """The live state behind the routes: the store, the config, the fault injector and the limits."""

    def __init__(self, data_dir: str | Path, config: EmulatorConfig) -> None:
        self.store = BatchStore(data_dir)
        self.files = FileStore(data_dir)
        self.faults = FaultInjector(config)
        # Creates are admitted one at a time: the queue and rate checks and the store that
        # follows must not interleave with another create's.
        self.admission = threading.Lock()
        self.recent_creates: deque[float] = deque()
        self.creates_refused = 0  # creates answered 429 by the queue or create-rate limit since reset
        self.creates = 0  # batches created since reset (each later one starts later: start_stagger_seconds)
        self._messages_lock = threading.Lock()
        self._messages_answered = 0
        # Every API call by (workspace, route), whatever its answer: a test can then prove that a
        # job called only its workspace, not only those of its calls that carried a beta header.
        self._calls: Counter[tuple[str, str]] = Counter()
        self._calls_lock = threading.Lock()

    def now(self) -> float:
        """Return the emulator's clock: the wall clock plus ``clock_offset_seconds``."""
        return time.time() + self.faults.config.clock_offset_seconds

    def reset(self) -> None:
        """Forget every batch, cache entry, recent create and answered message; restart the fault sequence."""
        with self.admission, self._messages_lock:
            self.faults.restart()
            self.store.reset()
            self.files.reset()
            self.recent_creates.clear()
            self._messages_answered = 0
            self.creates_refused = 0
            self.creates = 0
        with self._calls_lock:
            self._calls.clear()

    def admit(self, requests: int, now: float) -> int:
        """Return the requests queued once a batch of ``requests`` is stored; raise the 429 of a limit.

        Call with ``admission`` held, and :meth:`admitted` once the batch is stored.
        """
        config = self.faults.config
        while self.recent_creates and self.recent_creates[0] <= now - 60:
            self.recent_creates.popleft()
        refusal = rate_refusal(self.recent_creates, config.create_rate_per_minute, now)
        queue = self.store.queue(now)
        refusal = refusal or queue_refusal(queue, requests, config.queue_limit, now)
        if refusal is not None:
            self.creates_refused += 1
            raise ApiError.from_refusal(refusal)
        return sum(count for _, count in queue) + requests

    def admitted(self, now: float) -> None:
        """Count a stored create toward the create rate."""
        self.recent_creates.append(now)
        self.creates += 1

    def count_call(self, workspace: str, route: str) -> None:
        """Count one API call of ``workspace`` (``""``: the default) to ``route`` (method, path template)."""
        with self._calls_lock:
            self._calls[workspace, route] += 1

    def calls_by_workspace(self) -> dict[str, dict[str, int]]:
        """Return the API calls since start or reset: workspace -> ``"METHOD /path/{template}"`` -> count."""
        with self._calls_lock:
            calls = list(self._calls.items())
        by_workspace: dict[str, dict[str, int]] = {}
        for (workspace, route), count in sorted(calls):
            by_workspace.setdefault(workspace, {})[route] = count
        return by_workspace

    @property
    def messages_answered(self) -> int:
        """Return how many ``POST /v1/messages`` calls were answered since start or reset (each one paid)."""
        return self._messages_answered

    def answer_message(self, params: Params, workspace: str) -> dict[str, Any]:
        """Return the Message answering a ``POST /v1/messages`` body; raise the API's error otherwise."""
        config = self.faults.config
        with self._messages_lock:
            self._messages_answered += 1
            call_id = f"message-{self._messages_answered}"
        now = self.now()
        with self.store.prompt_cache(workspace) as cache, files_scope(self.files, workspace):
            answerer = Answerer(cache, _behaviours(config))
            facts = answerer.facts(params.model)
            if facts is None:
                raise ApiError(404, f"model: {params.model}", error_type="not_found_error")
            problem = request_problem(params, facts)
            if problem is not None:
                raise ApiError(400, problem)
            error_type = injected_error(outcome_draw(config.seed, 0, call_id), config.error_rates())
            if error_type is not None:
                raise ApiError(
                    STATUS_BY_ERROR_TYPE[error_type], error_message(error_type), error_type=error_type
                )
            prompt = answerer.prompt(params, facts, lambda: now)
            problem = prompt_problem(prompt, facts)
            if problem is not None:
                raise ApiError(400, problem)
            turn = answerer.turn(
                params,
                "msg_" + secrets.token_hex(12),
                now,
                lambda purpose: outcome_draw(config.seed, 0, f"{call_id}:{purpose}"),
            )
            return answerer.message(params, facts, prompt, turn, service_tier="standard")

    def configure(self, changes: dict[str, Any]) -> EmulatorConfig:
        """Apply config changes; re-pace unfinished batches when the pace or start delay changes."""
        old = self.faults.config
        new = old.updated(changes)
        self.faults.replace_config(new)
        if new.throughput != old.throughput or new.start_delay_seconds != old.start_delay_seconds:
            now = self.now()
            for record in self.store.unfinished(now):
                schedule = restarted(record.schedule, now, new.start_delay_seconds)
                if new.throughput != record.schedule.rate:
                    schedule = repaced(schedule, now, new.throughput)
                if schedule != record.schedule:
                    self.store.save_schedule(record.seq, schedule)
        return new

    def batch_json(self, record: BatchRecord, base_url: str, now: float) -> dict[str, Any]:
        """Return the MessageBatch object of a record read at ``now``."""
        counts = record.counts
        schedule = record.schedule
        ended = record.state.status == "ended"
        return {
            "id": record.id,
            "type": "message_batch",
            "processing_status": record.state.status,
            "request_counts": {
                "processing": counts.processing,
                "succeeded": counts.succeeded,
                "errored": counts.errored,
                "canceled": counts.canceled,
                "expired": counts.expired,
            },
            "ended_at": rfc3339(record.state.ended_at),
            "created_at": rfc3339(schedule.created_at),
            "expires_at": rfc3339(schedule.expires_at),
            "archived_at": rfc3339(archived_at(schedule, now)),
            "cancel_initiated_at": rfc3339(schedule.cancel_initiated_at),
            "results_url": f"{base_url}/v1/messages/batches/{record.id}/results" if ended else None,
        }

    def require(self, batch_id: str, now: float, workspace: str) -> BatchRecord:
        """Return the batch of ``workspace`` or raise a 404 ``not_found_error``."""
        record = self.store.get(batch_id, now=now, workspace=workspace)
        if record is None:
            raise ApiError(404, f"No batch with id {batch_id!r}", error_type="not_found_error")
        return record


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _workspace(request: Request) -> str:
    """Return the caller's workspace: its ``anthropic-workspace-id`` header, ``""`` for the default."""
    return request.headers.get("anthropic-workspace-id", "").strip()


def _api_key(request: Request) -> str:
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _http_fault_error(status: int, config: EmulatorConfig) -> ApiError:
    headers: dict[str, str] = {}
    if status == 429:
        headers = {
            "retry-after": str(math.ceil(config.retry_after_seconds)),
            "retry-after-ms": str(round(config.retry_after_seconds * 1000)),
        }
    return ApiError(status, _FAULT_MESSAGES.get(status, "Injected fault"), headers=headers)


Handler = Callable[[Request, "str | None"], Any]


def _api_route(emulator: Emulator, path: str, method: str, handler: Handler) -> Route:
    """Return a route running ``api_guard`` before ``handler``; sync handlers run in a thread."""

    async def endpoint(request: Request) -> Response:
        emulator.count_call(_workspace(request), f"{method} {path}")
        fault = await api_guard(emulator, request)
        if inspect.iscoroutinefunction(handler):
            response: Response = await handler(request, fault)
        else:
            response = await run_in_threadpool(handler, request, fault)
        return response

    return Route(path, endpoint, methods=[method])


async def api_guard(emulator: Emulator, request: Request) -> str | None:
    """Apply latency, auth, version and HTTP faults; return ``drop``/``lost`` when the response is cut."""
    config = emulator.faults.config
    if config.latency_ms:
        await asyncio.sleep(config.latency_ms / 1000)
    if not _api_key(request):
        raise ApiError(401, "x-api-key header or Authorization: Bearer token is required")
    version = request.headers.get("anthropic-version")
    if not version:
        raise ApiError(400, "anthropic-version: header is required")
    if not _VERSION.match(version):
        raise ApiError(400, f"anthropic-version: {version!r} is not a valid version")
    betas = beta_names(request.headers.get("anthropic-beta", ""))
    if betas:
        unknown = unsupported_beta(betas)
        if unknown is not None:
            raise ApiError(400, f"Unsupported beta header: {unknown}")
        log.info(
            "anthropic-beta %s on %s %s in workspace %s",
            ",".join(betas),
            request.method,
            request.url.path,
            _workspace(request) or "(default)",
        )
    match = _BATCH_PATH.match(request.url.path)
    if match and match["id"] in config.batch_http_faults:
        raise _http_fault_error(config.batch_http_faults[match["id"]], config)
    fault = emulator.faults.http_fault(
        results_stream=request.url.path.endswith("/results"),
        create=request.method == "POST" and request.url.path == "/v1/messages/batches",
    )
    if fault is None or fault in (DROP, LOST):
        return None if fault is None else str(fault)
    raise _http_fault_error(int(fault), config)


def api_routes(emulator: Emulator) -> list[Route]:
    """Return the ``/v1`` routes bound to ``emulator``."""

    async def create_batch(request: Request, fault: str | None) -> Response:
        config = emulator.faults.config
        if config.spend_limit_reached:
            raise ApiError.from_refusal(spend_limit_refusal(emulator.now()))
        started = time.perf_counter()
        holder = [await _read_body(request, config.max_body_bytes)]
        lenient = bool(request.headers.get("anthropic-beta"))  # betas may add parameters
        workspace = _workspace(request)
        batch_id = "msgbatch_" + secrets.token_hex(12)
        timings = {"read": time.perf_counter() - started}

        def create() -> BatchRecord:
            with _gc_paused(), files_scope(emulator.files, workspace):
                started = time.perf_counter()
                try:
                    requests = parse_create_body(
                        holder.pop(), max_requests=config.max_requests, lenient=lenient
                    )
                except InvalidBatch as exc:
                    raise ApiError(400, str(exc)) from None
                timings["parse"] = time.perf_counter() - started
                with emulator.admission:
                    # Whole microseconds, so created_at + ttl prints exactly ttl after created_at.
                    now = round(emulator.now(), 6)
                    queued_after = emulator.admit(len(requests), now)
                    schedule = new_schedule(
                        num_requests=len(requests),
                        created_at=now,
                        ttl_seconds=config.ttl_seconds,
                        start_delay_seconds=config.start_delay_seconds
                        + config.start_stagger_seconds * emulator.creates,
                        rate=config.throughput,
                    )
                    record = emulator.store.create_batch(
                        batch_id=batch_id,
                        requests=requests,
                        schedule=schedule,
                        seed=config.seed,
                        error_rates=config.error_rates(),
                        expire_rate=config.expire_rate,
                        behaviours=_behaviours(config),
                        workspace=workspace,
                        queued_after=queued_after,
                    )
                    emulator.admitted(now)
                timings["store"] = time.perf_counter() - started - timings["parse"]
                return record

        record = await run_in_threadpool(create)
        body = _encode(emulator.batch_json(record, _base_url(request), record.schedule.created_at))
        if fault == LOST:  # the batch is stored; the client never hears of it
            return StreamingResponse(_cut(body), media_type="application/json")
        # Where the time of a create went (read body, parse+validate, build+store), for benchmarks.
        server_timing = ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in timings.items())
        return Response(body, media_type="application/json", headers={"server-timing": server_timing})

    def list_batches(request: Request, _fault: str | None) -> Response:
        params = request.query_params
        try:
            limit = int(params.get("limit", "20"))
        except ValueError:
            raise ApiError(400, f"limit: {params.get('limit')!r} is not an integer") from None
        if not 1 <= limit <= 1000:
            raise ApiError(400, f"limit: must be between 1 and 1000, got {limit}")
        after_id, before_id = params.get("after_id"), params.get("before_id")
        if after_id and before_id:
            raise ApiError(400, "after_id and before_id cannot be used together")
        cursors: dict[str, int | None] = {"after_id": None, "before_id": None}
        workspace = _workspace(request)
        for name, value in (("after_id", after_id), ("before_id", before_id)):
            if value:
                cursors[name] = emulator.store.seq_of(value, workspace)
                if cursors[name] is None:
                    raise ApiError(400, f"{name}: no batch with id {value!r}")
        now = emulator.now()
        records, has_more = emulator.store.list_page(
            limit=limit,
            after_seq=cursors["after_id"],
            before_seq=cursors["before_id"],
            now=now,
            workspace=workspace,
        )
        base_url = _base_url(request)
        return _json(
            {
                "data": [emulator.batch_json(r, base_url, now) for r in records],
                "has_more": has_more,
                "first_id": records[0].id if records else None,
                "last_id": records[-1].id if records else None,
            }
        )

    def retrieve_batch(request: Request, _fault: str | None) -> Response:
        now = emulator.now()
        record = emulator.require(request.path_params["batch_id"], now, _workspace(request))
        return _json(emulator.batch_json(record, _base_url(request), now))

    def cancel_batch(request: Request, _fault: str | None) -> Response:
        batch_id = request.path_params["batch_id"]
        now = emulator.now()
        workspace = _workspace(request)
        record = emulator.require(batch_id, now, workspace)
        if record.state.status == "in_progress":
            schedule = canceled(record.schedule, now, emulator.faults.config.cancel_delay_seconds)
            emulator.store.save_schedule(record.seq, schedule)
            record = emulator.require(batch_id, now, workspace)
        return _json(emulator.batch_json(record, _base_url(request), now))

    def delete_batch(request: Request, _fault: str | None) -> Response:
        batch_id = request.path_params["batch_id"]
        record = emulator.require(batch_id, emulator.now(), _workspace(request))
        if record.state.status != "ended":
            raise ApiError(
                400,
                f"Batch {batch_id} cannot be deleted while it is {record.state.status}; "
                "cancel it and wait until it has ended",
            )
        emulator.store.delete(record.seq)
        return _json({"id": batch_id, "type": "message_batch_deleted"})

    def batch_results(request: Request, fault: str | None) -> Response:
        batch_id = request.path_params["batch_id"]
        now = emulator.now()
        record = emulator.require(batch_id, now, _workspace(request))
        if record.state.status != "ended":
            raise ApiError(
                400,
                f"Batch {batch_id} is still {record.state.status}; results are available once it has ended",
            )
        archived = archived_at(record.schedule, now)
        if archived is not None:
            # The API keeps results 29 days after creation; its docs give the archived batch's
            # ``archived_at`` but not the download's answer: a 404, as for a batch that is gone.
            raise ApiError(
                404,
                f"The results of batch {batch_id} are no longer available: it was archived at "
                f"{rfc3339(archived)}",
                error_type="not_found_error",
            )
        lines = _result_lines(emulator.store, record)
        if fault == DROP:
            lines = _dropped(lines)
        return StreamingResponse(lines, media_type="application/x-jsonl")

    async def count_tokens(request: Request, _fault: str | None) -> Response:
        try:
            body = decode_body(await request.body(), CountTokensBody)
        except InvalidBatch as exc:
            raise ApiError(400, str(exc)) from None
        if not models.is_served(body.model):
            raise ApiError(404, f"model: {body.model}", error_type="not_found_error")
        with files_scope(emulator.files, _workspace(request)):
            segments = tokenizer_for(body.model).segments(body.system, body.messages, body.tools)
        return _json({"input_tokens": sum(segment.tokens for segment in segments)})

    async def create_message(request: Request, _fault: str | None) -> Response:
        config = emulator.faults.config
        if config.spend_limit_reached:
            raise ApiError.from_refusal(spend_limit_refusal(emulator.now()))
        body = await _read_body(request, min(config.max_body_bytes, MESSAGES_MAX_BODY_BYTES))
        lenient = bool(request.headers.get("anthropic-beta"))
        workspace = _workspace(request)

        def answer() -> dict[str, Any]:
            try:
                params = parse_message_body(body, lenient=lenient)
            except InvalidBatch as exc:
                raise ApiError(400, str(exc)) from None
            return emulator.answer_message(params, workspace)

        return _json(await run_in_threadpool(answer))

    def list_models(request: Request, _fault: str | None) -> Response:
        ids = models.model_ids()
        after = request.query_params.get("after_id")
        start = ids.index(after) + 1 if after in ids else 0
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            raise ApiError(400, "limit: must be an integer") from None
        page = ids[start : start + max(1, min(limit, 1000))]
        return _json(
            {
                "data": [models.model_info(model_id) for model_id in page],
                "has_more": start + len(page) < len(ids),
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            }
        )

    def retrieve_model(request: Request, _fault: str | None) -> Response:
        model_id = request.path_params["model_id"]
        info = models.model_info(model_id)
        if info is None:
            raise ApiError(404, f"model: {model_id}", error_type="not_found_error")
        return _json(info)

    batch = "/v1/messages/batches/{batch_id}"
    return [
        *file_routes(emulator),
        _api_route(emulator, "/v1/models", "GET", list_models),
        _api_route(emulator, "/v1/models/{model_id}", "GET", retrieve_model),
        _api_route(emulator, "/v1/messages/batches", "POST", create_batch),
        _api_route(emulator, "/v1/messages/batches", "GET", list_batches),
        _api_route(emulator, batch, "GET", retrieve_batch),
        _api_route(emulator, batch, "DELETE", delete_batch),
        _api_route(emulator, batch + "/cancel", "POST", cancel_batch),
        _api_route(emulator, batch + "/results", "GET", batch_results),
        _api_route(emulator, "/v1/messages/count_tokens", "POST", count_tokens),
        _api_route(emulator, "/v1/messages", "POST", create_message),
    ]


def _require_files_beta(request: Request) -> None:
    if FILES_BETA not in beta_names(request.headers.get("anthropic-beta", "")):
        raise ApiError(
            400, f"The Files API is in beta: send the header 'anthropic-beta: {FILES_BETA}' to use it"
        )


def file_routes(emulator: Emulator) -> list[Route]:
    """Return the Files API routes (``/v1/files``): upload, list, metadata, delete; download refused."""

    async def upload(request: Request, _fault: str | None) -> Response:
        _require_files_beta(request)
        form = await request.form(max_files=1, max_fields=10)
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise ApiError(400, "file: a multipart part named 'file' holding the file is required")
        data = await part.read()
        limit = emulator.faults.config.max_file_bytes
        if len(data) > limit:
            raise ApiError(413, f"File too large: {len(data):,} bytes; the limit is {limit:,} bytes per file")
        record = await run_in_threadpool(
            emulator.files.add, data, part.filename or "upload", part.content_type, _workspace(request)
        )
        return _json(metadata(record))

    def list_files(request: Request, _fault: str | None) -> Response:
        _require_files_beta(request)
        params = request.query_params
        try:
            limit = int(params.get("limit", "20"))
        except ValueError:
            raise ApiError(400, f"limit: {params.get('limit')!r} is not an integer") from None
        if not 1 <= limit <= 1000:
            raise ApiError(400, f"limit: must be between 1 and 1000, got {limit}")
        records = emulator.files.newest_first(_workspace(request))
        ids = [r["id"] for r in records]
        # SDK 2.x pages with ``page`` (the ``next_page`` of the previous answer); 1.x with after_id.
        after_id, before_id = params.get("after_id") or params.get("page"), params.get("before_id")
        if after_id:
            start = ids.index(after_id) + 1 if after_id in ids else len(ids)
            page = records[start : start + limit]
            has_more = start + limit < len(records)
        elif before_id:
            end = ids.index(before_id) if before_id in ids else 0
            page = records[max(0, end - limit) : end]
            has_more = end - limit > 0
        else:
            page, has_more = records[:limit], limit < len(records)
        return _json(
            {
                "data": [metadata(r) for r in page],
                "has_more": has_more,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "next_page": page[-1]["id"] if page and has_more else None,
            }
        )

    def require(request: Request) -> dict[str, Any]:
        _require_files_beta(request)
        file_id = request.path_params["file_id"]
        record = emulator.files.get(file_id, _workspace(request))
        if record is None:
            raise ApiError(404, f"File not found: {file_id}", error_type="not_found_error")
        return record

    def retrieve_file(request: Request, _fault: str | None) -> Response:
        return _json(metadata(require(request)))

    def delete_file(request: Request, _fault: str | None) -> Response:
        record = require(request)
        emulator.files.delete(record["id"], _workspace(request))
        return _json({"id": record["id"], "type": "file_deleted"})

    def download_file(request: Request, _fault: str | None) -> Response:
        record = require(request)
        raise ApiError(
            400,
            f"File {record['id']} is not downloadable: only files created by skills or the code "
            "execution tool can be downloaded, not files you uploaded",
        )

    one = "/v1/files/{file_id}"
    return [
        _api_route(emulator, "/v1/files", "POST", upload),
        _api_route(emulator, "/v1/files", "GET", list_files),
        _api_route(emulator, one, "GET", retrieve_file),
        _api_route(emulator, one, "DELETE", delete_file),
        _api_route(emulator, one + "/content", "GET", download_file),
    ]


_gc_lock = threading.Lock()
_gc_pausers = 0


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a create decodes and builds 100,000 requests.

    Decoding allocates a few hundred thousand objects, which without this triggers
    repeated full collections and more than doubles the decode time. Nested or
    concurrent pauses are counted, so the GC comes back only after the last one.
    """
    global _gc_pausers
    with _gc_lock:
        _gc_pausers += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0:
                gc.enable()


async def _read_body(request: Request, limit: int) -> bytearray:
    """Return the request body; raise 413 at once when its declared length is over ``limit``.

    A body that turns out longer than it said is drained to its end, then refused the same way.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)  # answered before reading a byte: the client may never send them
    too_large = False
    body = bytearray()
    async for chunk in request.stream():
        if too_large:
            continue
        body += chunk
        if len(body) > limit:
            too_large = True
            body = bytearray()
    if too_large:
        raise _too_large(limit)
    return body


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body exceeds the limit of {limit:,} bytes; split the batch")


def _result_lines(store: BatchStore, record: BatchRecord) -> Iterator[bytes]:
    """Yield the JSONL results of an ended batch in request order, a chunk of lines at a time."""
    rest_type = b"canceled" if record.state.end_reason == "canceled" else b"expired"
    return store.result_chunks(record.seq, record.state.done_at_end, rest_type)


def _dropped(lines: Iterator[bytes]) -> Iterator[bytes]:
    """Yield the first half of the first chunk, then drop the connection."""
    return _cut(next(lines, b""))


def _cut(body: bytes) -> Iterator[bytes]:
    """Yield the first half of ``body``, then drop the connection (an injected fault)."""
    yield body[: max(1, len(body) // 2)]
    raise _ResponseCut("response cut mid-way (injected by the emulator)")


def admin_routes(emulator: Emulator) -> list[Route]:
    """Return the ``/_emulator`` routes: health, config, stats, calls, billing, reset (no auth, no faults)."""

    async def health(request: Request) -> Response:
        return _json({"status": "ok"})

    async def get_config(request: Request) -> Response:
        return _json(emulator.faults.config.to_json())

    async def post_config(request: Request) -> Response:
        try:
            changes = msgspec.json.decode(await request.body() or b"{}")
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"config body is not JSON: {exc}") from None
        if not isinstance(changes, dict):
            raise ApiError(400, "config body must be a JSON object of settings to change")
        try:
            config = await run_in_threadpool(emulator.configure, changes)
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from None
        return _json(config.to_json())

    def stats(request: Request) -> Response:
        return _json({
            **emulator.store.stats(emulator.now()),
            "http_faults_injected": emulator.faults.injected,
            "creates_refused": emulator.creates_refused,
            "files_uploaded": emulator.files.uploads,
            "files_stored": emulator.files.count(),
            "messages_answered": emulator.messages_answered,
        })  # fmt: skip

    def calls(request: Request) -> Response:
        return _json(emulator.calls_by_workspace())

    async def billing(request: Request) -> Response:
        return _json(await run_in_threadpool(emulator.store.billing, time.time()))

    def reset(request: Request) -> Response:
        emulator.reset()
        return _json(emulator.store.stats(emulator.now()))

    return [
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/_emulator/config", get_config, methods=["GET"]),
        Route("/_emulator/config", post_config, methods=["POST"]),
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/calls", calls, methods=["GET"]),
        Route("/_emulator/billing", billing, methods=["GET"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
    ]


def create_app(data_dir: str | Path, config: EmulatorConfig | None = None) -> Starlette:
    """Return the emulator ASGI app storing its state under ``data_dir``."""
    emulator = Emulator(data_dir, config or EmulatorConfig())

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error_response(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error_response(request, ApiError(exc.status_code, str(exc.detail)))

    app = Starlette(
        routes=[*admin_routes(emulator), *api_routes(emulator)],
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
    )
    app.state.emulator = emulator
    return app
