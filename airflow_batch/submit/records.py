"""Requests built from records: a prompt template, a builder, defaults filled in.

Data engineers usually hold records (rows with fields), not requests. :func:`records_to_requests`
turns each record into a request with a ``str.format_map`` prompt template over the record's
fields and/or a callable, taking ``custom_id`` from a named field. A record that cannot be
turned into a request (missing field, invalid id) becomes an :class:`InvalidRow` naming the
reason, so it is reported with its row number like any other invalid request; an invalid
``custom_id`` is never rewritten into a valid one, because rewriting can make two ids collide.

:class:`RequestDefaults` fills ``model``, ``max_tokens`` and ``system`` into the params of
every request that lacks them. With ``cache_system_prompt`` the default system prompt is sent
as a text block marked ``cache_control``: the first request that carries it writes the prompt
cache and the following ones read it (the batch guide's prompt-caching pattern). Only the
default system prompt is marked: a per-request system prompt is unique to its request, and
marking it would pay the cache-write premium for nothing.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_batch.submit.validation import CUSTOM_ID_HINT, InvalidRow, check_custom_id

RequestBuilder = Callable[[Mapping[str, Any]], Any]
CustomIdFrom = str | Callable[[Mapping[str, Any]], Any]


class _Blank:
    """A blank line of a records file: no record, but it counts in the line numbers."""

    def __repr__(self) -> str:
        return "BLANK"


BLANK = _Blank()


@dataclass(frozen=True, slots=True)
class Carried:
    """A request with what it carries to its result rows.

    ``input``: the record's passthrough fields (a mapping, or their raw JSON from an earlier
    round); ``row``: the input row it came from (retry rounds keep round 0's numbers).
    """

    request: Any
    input: Any = None
    row: int | None = None


def _fields_hint(record: Mapping[str, Any]) -> str:
    names = ", ".join(sorted(map(str, record))[:20])
    return f"these records have the fields: {names}"


CACHE_TTLS = ("5m", "1h")


def cached_system(system: str | list[Any], ttl: str = "1h") -> list[Any]:
    """Return ``system`` as text blocks whose last block carries ``cache_control`` with ``ttl``."""
    cache_control = {"type": "ephemeral", "ttl": ttl}
    if isinstance(system, str):
        return [{"type": "text", "text": system, "cache_control": cache_control}]
    if any(isinstance(block, Mapping) and "cache_control" in block for block in system):
        return list(system)
    if not system or not isinstance(system[-1], Mapping):
        return list(system)
    return [*system[:-1], {**system[-1], "cache_control": cache_control}]


@dataclass(frozen=True)
class RequestDefaults:
    """Values put into the params of every request that lacks them.

    ``cache_ttl``: the lifetime of the shared system prompt's cache entry, 1 hour by default
    (a batch can take longer than 5 minutes to process, so the batch documentation recommends
    it for shared context). ``output_format``: the job's structured-outputs format, put into
    ``output_config`` of every request that sets none.
    """

    model: str | None = None
    max_tokens: int | None = None
    system: str | list[Any] | None = None
    cache_system_prompt: bool = True
    cache_ttl: str = "1h"
    output_format: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.cache_ttl not in CACHE_TTLS:
            raise ValueError(f"cache_ttl={self.cache_ttl!r}: must be one of {', '.join(CACHE_TTLS)}")
        # Built once: the same list object is shared by every request's params.
        if self.system is not None and self.cache_system_prompt:
            object.__setattr__(self, "_system_value", cached_system(self.system, self.cache_ttl))
        else:
            object.__setattr__(self, "_system_value", self.system)

    @property
    def empty(self) -> bool:
        """Return True when there is nothing to apply."""
        return (
            self.model is None and self.max_tokens is None and self.system is None and not self.output_format
        )

    def fills(self, params: Any) -> bool:
        """Return whether the defaults would change typed ``params`` (a request line's fast path)."""
        return (self.system is not None and params.system is None) or (
            self.output_format is not None
            and (params.output_config is None or params.output_config.format is None)
        )

    def apply(self, request: Any) -> Any:
        """Return ``request`` with the defaults filled into its params (a new dict if changed)."""
        if self.empty or not isinstance(request, Mapping):
            return request
        params = request.get("params")
        if not isinstance(params, Mapping):
            return request
        config = params.get("output_config")
        needs_format = self.output_format is not None and not (
            isinstance(config, Mapping) and "format" in config
        )
        missing = (
            (self.model is not None and "model" not in params)
            or (self.max_tokens is not None and "max_tokens" not in params)
            or (self.system is not None and "system" not in params)
            or needs_format
        )
        if not missing:
            return request
        filled = dict(params)
        if self.model is not None:
            filled.setdefault("model", self.model)
        if self.max_tokens is not None:
            filled.setdefault("max_tokens", self.max_tokens)
        if self.system is not None and "system" not in filled:
            filled["system"] = self._system_value  # type: ignore[attr-defined]
        if needs_format:
            filled["output_config"] = {
                **(config if isinstance(config, Mapping) else {}),
                "format": self.output_format,
            }
        return {**request, "params": filled}


def template_fields(template: str) -> list[str]:
    """Return the record fields a ``str.format`` template refers to (top-level names)."""
    names: list[str] = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        name = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not name or name.isdigit():
            raise ValueError(f"prompt_template field {{{field}}} must name a record field, e.g. {{text}}")
        if name not in names:
            names.append(name)
    return names


def _record_custom_id(record: Mapping[str, Any], field: str) -> str | InvalidRow:
    if field not in record:
        return InvalidRow(
            f"record has no field {field!r} to use as custom_id (custom_id_field={field!r})",
            hint=_fields_hint(record) + "; or pass custom_id_from= to build the id",
        )
    value = record[field]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    problem = check_custom_id(value)
    if problem:
        return InvalidRow(problem, value if isinstance(value, str) else None, CUSTOM_ID_HINT)
    return str(value)


_SLUG = re.compile(r"[^A-Za-z0-9_-]+")
_SLUG_CHARS = 64 - 1 - 12  # room for "-" and 12 hex digits of hash


def custom_id_for(key: str) -> str:
    """Return a valid, stable ``custom_id`` for any key: the key when it is one, else a slug and a hash.

    ``src/app/main.py`` becomes ``src-app-main-py-1f0c6b7e9a2d``: readable, at most 64
    characters, the same for the same key on every run, and different for different keys
    (the hash is of the whole key).
    """
    if check_custom_id(key) is None:
        return key
    slug = _SLUG.sub("-", key).strip("-")[:_SLUG_CHARS].strip("-")
    digest = hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
    return f"{slug}-{digest}" if slug else digest


#: The passthrough field that carries the key ``custom_id_from`` built (see :func:`carried_fields`).
KEY_FIELD = "key"


def carried_fields(passthrough_fields: Sequence[str], custom_id_from: CustomIdFrom | None) -> list[str]:
    """Return the fields a job's rows carry under ``input``: the passthrough fields, and ``key``
    with ``custom_id_from``; raise ValueError when the record's own ``key`` would be overwritten."""
    fields = list(passthrough_fields)
    if custom_id_from is None:
        return fields
    if KEY_FIELD in fields:
        raise ValueError(
            f"passthrough_fields has {KEY_FIELD!r}, which custom_id_from= fills with the key it builds, so "
            f"the record's own {KEY_FIELD!r} would be lost; rename that record field before the job, or "
            "build the key from it (custom_id_from='{key}')"
        )
    return [*fields, KEY_FIELD]


def _record_key(
    record: Mapping[str, Any], custom_id_from: CustomIdFrom, key_fields: Sequence[str]
) -> str | InvalidRow:
    """Return the key ``custom_id_from`` builds from a record; a null or empty key is an invalid row
    (``str(None)`` would make every such record the same id, ``"None"``)."""
    nulls = [name for name in key_fields if record.get(name) is None]
    if nulls:
        return InvalidRow(
            f"custom_id_from cannot build a key from this record: its field {nulls[0]!r} is null",
            hint="give every record a value there, or leave such records out",
        )
    try:
        key = custom_id_from(record) if callable(custom_id_from) else custom_id_from.format_map(record)
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
        return InvalidRow(
            f"custom_id_from cannot build a key from this record: {exc!r}", hint=_fields_hint(record)
        )
    if key is None or key == "":
        return InvalidRow(
            f"custom_id_from built {'no key (None)' if key is None else 'an empty key'} for this record",
            hint="return a non-empty key for every record, or leave such records out",
        )
    return str(key)


def _params_from_builder(result: Any) -> dict[str, Any] | str:
    if isinstance(result, str):
        return {"messages": [{"role": "user", "content": result}]}
    if isinstance(result, list):
        return {"messages": result}
    if isinstance(result, Mapping):
        return dict(result)
    return f"request_builder returned {type(result).__name__}; return a params dict, a messages list or a str"


def records_to_requests(
    records: Iterable[Any],
    *,
    prompt_template: str | None = None,
    request_builder: RequestBuilder | None = None,
    custom_id_field: str = "custom_id",
    custom_id_from: CustomIdFrom | None = None,
    passthrough_fields: Sequence[str] = (),
) -> Iterator[Any]:
    """Yield one request per record, in order (or :class:`InvalidRow`, or ``BLANK`` for a blank line).

    With ``prompt_template`` the user message is ``prompt_template.format_map(record)``. With
    ``request_builder`` the callable receives the record and returns the params (a dict), the
    messages (a list) or the user message (a str); with both, the template gives the user
    message and the builder returns extra params merged on top (e.g. ``temperature``).

    The ``custom_id`` is the record's ``custom_id_field``, or with ``custom_id_from`` (a
    ``str.format`` template over the record, or a callable) a key made into a valid id by
    :func:`custom_id_for`; the key itself is then carried to the result rows as ``input.key``.
    ``passthrough_fields`` are carried to the result and failure rows under ``input`` (a
    missing field is null). Requests that carry fields are yielded as :class:`Carried`.
    """
    if prompt_template is None and request_builder is None:
        raise ValueError("records need prompt_template= and/or request_builder= to become requests")
    carried_fields(passthrough_fields, custom_id_from)  # refuses a passthrough "key" it would overwrite
    fields = template_fields(prompt_template) if prompt_template is not None else []
    key_fields = template_fields(custom_id_from) if isinstance(custom_id_from, str) else []
    for record in records:
        if isinstance(record, InvalidRow) or record is BLANK:
            yield record
            continue
        if not isinstance(record, Mapping):
            yield InvalidRow(f"a record must be a JSON object, got {type(record).__name__}")
            continue
        carried: dict[str, Any] = {name: record.get(name) for name in passthrough_fields}
        if custom_id_from is not None:
            key = _record_key(record, custom_id_from, key_fields)
            if isinstance(key, InvalidRow):
                yield key
                continue
            custom_id: str | InvalidRow = custom_id_for(key)
            carried[KEY_FIELD] = key
        else:
            custom_id = _record_custom_id(record, custom_id_field)
        if isinstance(custom_id, InvalidRow):
            yield custom_id
            continue
        missing = [name for name in fields if name not in record]
        if missing:
            yield InvalidRow(
                f"record has no field {missing[0]!r} used by prompt_template", custom_id, _fields_hint(record)
            )
            continue
        params: dict[str, Any] = {}
        if prompt_template is not None:
            try:
                text = prompt_template.format_map(record)
            except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
                yield InvalidRow(f"prompt_template cannot be filled from this record: {exc!r}", custom_id)
                continue
            params["messages"] = [{"role": "user", "content": text}]
        if request_builder is not None:
            try:
                built = _params_from_builder(request_builder(record))
            except Exception as exc:
                yield InvalidRow(f"request_builder raised {exc!r}", custom_id)
                continue
            if isinstance(built, str):
                yield InvalidRow(built, custom_id)
                continue
            if prompt_template is not None and "messages" in built:
                yield InvalidRow(
                    "request_builder returned messages although prompt_template builds them; "
                    "return only extra params, or drop prompt_template",
                    custom_id,
                )
                continue
            params.update(built)
        request = {"custom_id": custom_id, "params": params}
        yield Carried(request, carried) if carried else request
