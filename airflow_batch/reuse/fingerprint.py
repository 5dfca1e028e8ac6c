"""The fingerprint of a request: what identifies its answer, whatever its ``custom_id``.

Two requests with the same fingerprint ask the model the same thing, so one's answer serves
the other. The fingerprint is a hash of the canonical JSON of the request's ``params`` as
sent (model, system, messages, tools, tool choice, thinking, ``output_config`` with the
schema, sampling parameters, ``max_tokens``, stop sequences, metadata, every beta parameter:
everything that can change the answer), of the job's ``anthropic-beta`` names, which can
change it too, and of the job's *scope* (:func:`answer_scope`): what an answer's validity
depends on beyond the request (the API endpoint and workspace that answered it, and the
output schema it is judged by, in full: keywords the API's grammar does not enforce are not
in the request but are in the check). The ``custom_id`` is not part of it.

Canonical: the params after the job's defaults are filled in, encoded as compact UTF-8 JSON
with every object's keys in one fixed order and optional fields left out when absent or null.
In a job without betas the params are the validated types of :mod:`airflow_batch.rules.params`
(their fields in the types' order, free-form objects such as a schema or a tool sorted by
key), so a JSONL line and a record built into the same request give the same bytes (``1`` and
``1.0`` alike for ``temperature``, key order and whitespace ignored). A job with betas may send
parameters those types do not know; its params are hashed as decoded, every object sorted by
key, so no unknown parameter is dropped from the fingerprint. (msgspec's ``deterministic``
order, twice as fast as sorting the types' fields too; a release that reorders those fields
changes fingerprints, which makes old answers misses, never wrong answers.)

The hash is SHA-256 (hardware-accelerated on current CPUs: ~0.5 µs for a typical request),
kept to its first 128 bits as 32 hex digits. Its first 64 bits are the *key* an answer store
indexes (:mod:`airflow_batch.reuse.store`). Pure: no I/O, no Airflow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import msgspec

#: Hex digits of a fingerprint (128 bits).
FINGERPRINT_CHARS = 32
#: The canonical JSON of typed or decoded ``params``: fixed key order, compact, UTF-8.
canonical_params = msgspec.json.Encoder(order="deterministic").encode
sha256 = hashlib.sha256


def answer_scope(base_url: str, workspace_id: str | None, schema: Any = None) -> str:
    """Return the scope of a job's answers: its endpoint, workspace and output schema's canonical hash.

    An emulator's answers are not a real API's, one workspace's are not another's, and an answer
    valid for one schema may be invalid for another that sends the same request (a keyword the
    grammar does not enforce, such as ``pattern`` or ``minimum``, is checked locally only).
    """
    schema_hash = sha256(canonical_params(schema)).hexdigest() if schema is not None else "none"
    return f"endpoint={base_url.rstrip('/')}\nworkspace={workspace_id or ''}\nschema={schema_hash}\n"


def fingerprint_key(fingerprint: bytes) -> int:
    """Return the 64-bit key of a fingerprint (its first 16 hex digits): what a store indexes."""
    return int(fingerprint[:16], 16)


class Fingerprints:
    """Fingerprints of a job's requests: its scope and betas, then the canonical params.

    :param betas: the job's ``anthropic-beta`` names (order does not matter).
    :param scope: the job's :func:`answer_scope` (empty: a request's identity alone).
    """

    def __init__(self, betas: Sequence[str] = (), scope: str = "") -> None:
        #: What is hashed before the params: the scope, then the job's betas, sorted.
        betas_line = "betas=" + ",".join(sorted(betas)) + "\n" if betas else ""
        self.prefix = (scope + betas_line).encode()

    def of(self, params: Any) -> bytes:
        """Return the fingerprint of ``params`` (typed or decoded) as 32 ASCII hex digits."""
        data = canonical_params(params)
        if self.prefix:
            data = self.prefix + data
        return sha256(data).hexdigest()[:FINGERPRINT_CHARS].encode()
