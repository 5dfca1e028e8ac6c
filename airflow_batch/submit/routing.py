"""Which requests of a round go in a batch: answer reuse and the canary, decided during the pass.

:class:`Routing` is the :class:`~airflow_batch.submit.diversion.Diversion` of a submit. For each
valid request, in input order, the chunking pass gives it the request's fingerprint
(:mod:`airflow_batch.reuse.fingerprint`), which it records in the request's inputs twin line
(gather keys the answer it stores by it) and looks up:

- found in the answer store's index (``reuse_answers``): the request is *taken*, spilled to a
  local bucket file and not written to a chunk (unless the store cannot answer it after all);
- else, while the canary has fewer than N requests: *held* (``canary=N``);
- else: *sent*, written to its chunk as usual.

Once the whole input is known to be valid, :meth:`Routing.finish` runs the canary (the callback
given; it may refuse the round), gives the unusable canary requests back to the chunks, writes
the rows of the reused and canary-answered requests to the staged ``reused.jsonl`` (store hits
resolved one shard at a time: :func:`airflow_batch.reuse.hits.resolve_hits`, each stored answer
judged as a fresh one would be; a hit the store cannot answer is sent), and stores the canary's
usable answers in the answer store. Nothing here calls the API itself.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from airflow_batch import layout
from airflow_batch.reuse.check import ReuseCheck
from airflow_batch.reuse.fingerprint import FINGERPRINT_CHARS, Fingerprints, canonical_params, sha256
from airflow_batch.reuse.hits import HitSpill, resolve_hits, spilled_request
from airflow_batch.reuse.store import AnswerIndex, SegmentWriter
from airflow_batch.rows.contract import answered_row
from airflow_batch.rules.params import loads
from airflow_batch.submit.canary import (
    CanaryOutcome,
    HeldRequest,
    canary_answer_parts,
    canary_source,
)
from airflow_batch.submit.chunk_files import with_fingerprint
from airflow_batch.submit.chunking import CACHE_CONTROL
from airflow_batch.submit.diversion import HOLD, SEND, TAKEN

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.submit.estimate import TokenTally

_canonical = canonical_params
_sha256 = sha256
#: Sends and judges the held requests given the tally and the round's fingerprint; None: the
#: canary is not sent (an earlier attempt of the same round spent it) and the held requests are.
RunCanary = Callable[[list[HeldRequest], "TokenTally", str], CanaryOutcome | None]


@dataclass(frozen=True)
class AnswerReuse:
    """The job's answer store: where it is, whether to look requests up, how old an answer may be.

    ``lookup=False`` (retry rounds, a re-attach) still fingerprints every request, so gather
    stores the round's answers; ``max_age`` is in seconds (None: any age).
    """

    store: str
    lookup: bool = True
    max_age: float | None = None

    def __post_init__(self) -> None:
        if self.max_age is not None and self.max_age <= 0:
            raise ValueError(f"max_age must be a positive number of seconds, got {self.max_age}")


@dataclass(frozen=True, slots=True)
class _DecodedCount:
    """Counts a request known by its chunk line only in an estimate (a hit the store could not answer)."""

    line: bytes

    def __call__(self, tally: TokenTally) -> None:
        tally.add(loads(self.line)["params"], CACHE_CONTROL in self.line)


class Routing:
    """The diversion of one round's pass (see the module docstring).

    :param index: the answer store's index to look requests up in (None: no lookups).
    :param canary_size: how many requests the canary holds back (0: no canary).
    :param run_canary: sends and judges the held requests (and may raise to refuse the round).
    :param store: where to store the canary's usable answers (None: not stored).
    :param scope: the job's :func:`~airflow_batch.reuse.fingerprint.answer_scope` (endpoint,
        workspace, output schema), part of every fingerprint.
    :param check: judges each answer read back from the store (the job's schema, content kept).
    """

    def __init__(
        self,
        *,
        job: str,
        round_number: int,
        betas: tuple[str, ...] = (),
        index: AnswerIndex | None = None,
        canary_size: int = 0,
        run_canary: RunCanary | None = None,
        store: ObjectStoragePath | None = None,
        scope: str = "",
        check: ReuseCheck | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if canary_size and run_canary is None:
            raise ValueError("a canary needs run_canary")
        self.job = job
        self.round_number = round_number
        self.lenient = bool(betas)  # a job with betas may send params the typed shape does not know
        self.index = index
        self._shards = index.shards if index is not None else None
        self.canary_size = canary_size
        self.run_canary = run_canary
        self.store = store
        self.log = log or logging.getLogger(__name__)
        self._prefix = Fingerprints(betas, scope).prefix
        self.check = check or ReuseCheck()
        self._hits = HitSpill()
        self._held: list[HeldRequest] = []
        #: Filled in by finish: how many requests were answered from the store, and the canary.
        self.reused = 0
        self.canary: CanaryOutcome | None = None
        self.reused_file: ObjectStoragePath | None = None

    def route(self, params: Any) -> tuple[int, bytes, int]:
        """Return TAKEN (in the answer store), HOLD (for the canary) or SEND, the fingerprint and its key.

        The hot loop of a submit with reuse, hence the fingerprint and the index lookup inlined
        (see :meth:`Fingerprints.of` and :meth:`AnswerIndex.has`). A TAKEN request is then handed
        over with :meth:`take`.
        """
        data = _canonical(params)
        if self._prefix:
            data = self._prefix + data
        fingerprint = _sha256(data).hexdigest()[:FINGERPRINT_CHARS].encode()
        key = int(fingerprint[:16], 16)
        shards = self._shards
        if shards is not None:
            keys = shards[key >> 56]
            found = bisect_left(keys, key)
            if found != len(keys) and keys[found] == key:
                return TAKEN, fingerprint, key
        if len(self._held) < self.canary_size:
            return HOLD, fingerprint, key
        return SEND, fingerprint, key

    def take(self, key: int, fingerprint: bytes, inputs: bytes, line: bytes) -> None:
        """Keep a request answered from the store out of the chunks: its row is written by :meth:`finish`."""
        self._hits.add(key, fingerprint, inputs, line)

    def hold(
        self, line: bytes, inputs: bytes, fingerprint: bytes, count: Callable[[TokenTally], None]
    ) -> None:
        """Keep a request for the canary."""
        self._held.append(HeldRequest(line, inputs, fingerprint, count))

    def finish(
        self,
        staging: ObjectStoragePath,
        tally: TokenTally,
        send: Callable[[bytes, bytes], None],
        fingerprint: str,
    ) -> None:
        """Resolve the store's hits, run the canary, send what neither answered, and write the rows
        answered without a batch.

        A hit the store cannot answer after all (damaged, invalid for this job) is a request like any
        other: held for the canary while it has room, else sent.
        """
        if not self._hits.count and not self._held:
            return
        self.reused_file = staging / layout.REUSED_FILE
        with self.reused_file.open("wb") as out:
            if self._hits.count:
                self._resolve_hits(out, tally, send)
            if self._held:
                assert self.run_canary is not None
                self.canary = self.run_canary(self._held, tally, fingerprint)
                unanswered = self._held if self.canary is None else [a.held for a in self.canary.failed]
                for held in unanswered:
                    send(held.line, with_fingerprint(held.inputs, held.fingerprint))
                    held.count(tally)
                if self.canary is not None and self.canary.answered:
                    self._write_canary_rows(out)

    def _resolve_hits(self, out: IO[bytes], tally: TokenTally, send: Callable[[bytes, bytes], None]) -> None:
        """Write the rows of the hits the store answers; hold or send the others."""

        def send_back(spilled: bytes) -> None:
            fingerprint, inputs, line = spilled_request(spilled)
            count = _DecodedCount(line)
            if len(self._held) < self.canary_size:
                self._held.append(HeldRequest(line, inputs, fingerprint, count))
            else:
                send(line, with_fingerprint(inputs, fingerprint))
                count(tally)

        assert self.index is not None
        self.reused = resolve_hits(
            self.index,
            self._hits,
            out,
            self.round_number,
            check=self.check,
            send_back=send_back,
            logger=self.log,
        )
        self.log.info("%d request(s) answered from the answer store: not sent, no cost", self.reused)

    def _write_canary_rows(self, out: IO[bytes]) -> None:
        """Write the canary's usable answers as rows, and store them when the job has a store."""
        assert self.canary is not None
        written_at = datetime.now(UTC)
        segment = SegmentWriter() if self.store is not None else None
        try:
            for answer in self.canary.answered:
                body, usage = canary_answer_parts(answer)
                source = canary_source(answer, self.job, self.round_number, written_at.isoformat())
                out.write(answered_row(answer.held.inputs, self.round_number, body, usage, source))
                out.write(b"\n")
                if segment is not None:
                    segment.add(answer.held.fingerprint, body, source[:-1] + b',"usage":' + usage + b"}")
            if segment is not None and self.store is not None:
                name = layout.canary_segment_name(self.job, self.round_number)
                segment.commit(self.store, name, self.job, written_at.timestamp())
        finally:
            if segment is not None:
                segment.close()

    def close(self) -> None:
        """Remove the local spill files."""
        self._hits.close()


def max_age_seconds(max_age: Any, task_id: str) -> float | None:
    """Return ``max_age`` in seconds; raise ValueError for anything but a positive number or timedelta
    (``nan`` would silently turn reuse off: no age compares below it)."""
    if max_age is None:
        return None
    if isinstance(max_age, timedelta):
        seconds = max_age.total_seconds()
    elif isinstance(max_age, (int, float)) and not isinstance(max_age, bool):
        seconds = float(max_age)
    else:
        raise ValueError(
            f"{task_id}: max_age must be a number of seconds or a timedelta, got {max_age!r}; "
            "e.g. max_age=timedelta(hours=1) or max_age=3600"
        )
    if not seconds > 0:  # also refuses nan
        raise ValueError(f"{task_id}: max_age must be positive seconds, got {max_age!r}")
    return seconds
