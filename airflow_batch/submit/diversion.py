"""Requests the submit pass keeps out of the chunks: the seam between the pass and its routing.

The pass (:mod:`airflow_batch.submit.chunking`) asks a :class:`Diversion` about each valid
request; :mod:`airflow_batch.submit.routing` is the one a submit uses (answer reuse, canary).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.submit.estimate import TokenTally

#: What :meth:`Diversion.divert` answers: the request is sent, was taken (answered), or is held.
SEND, TAKEN, HOLD = 0, 1, 2


class Diversion(Protocol):
    """Requests a pass does not put in a chunk: answers to reuse, and the canary's sample.

    The pass asks :meth:`route` about each valid request in input order. A ``HOLD`` request is
    handed over with :meth:`hold` (its chunk line, inputs line, fingerprint and how to count it
    in an estimate); :meth:`finish`, called once the whole input is known to be valid, gives
    back through ``send`` (chunk line, twin line) the held or taken requests that must be sent
    after all, counting them in ``tally`` itself. See :mod:`airflow_batch.submit.routing`.
    """

    lenient: bool

    def route(self, params: Any) -> tuple[int, bytes, int]:
        """Return SEND, TAKEN or HOLD for a request, its fingerprint and the fingerprint's key.

        ``params`` are typed, or decoded for a lenient job.
        """
        ...

    def take(self, key: int, fingerprint: bytes, inputs: bytes, line: bytes) -> None:
        """Keep a request :meth:`route` answered TAKEN for, with its inputs line and its chunk line."""
        ...

    def hold(
        self, line: bytes, inputs: bytes, fingerprint: bytes, count: Callable[[TokenTally], None]
    ) -> None:
        """Keep a request :meth:`route` answered HOLD for: its line, inputs line, and how to count it."""
        ...

    def finish(
        self,
        staging: ObjectStoragePath,
        tally: TokenTally,
        send: Callable[[bytes, bytes], None],
        fingerprint: str,
    ) -> None:
        """Resolve what was taken and held (writing staged files); ``send`` what must be sent.

        ``fingerprint`` is the round's (every valid request), known once the input is.
        """
        ...


@dataclass(frozen=True, slots=True)
class PlainCount:
    """Counts a held plain request in an estimate (the round's, if it is sent after all)."""

    model: str
    max_tokens: int
    tokens: int
    line: bytes

    def __call__(self, tally: TokenTally) -> None:
        tally.add_plain(self.model, self.max_tokens, self.tokens, self.line)


@dataclass(frozen=True, slots=True)
class HeldCount:
    """Counts a held request in an estimate (the round's, if it is sent after all)."""

    params: Any
    may_cache: bool

    def __call__(self, tally: TokenTally) -> None:
        tally.add(self.params, self.may_cache)
