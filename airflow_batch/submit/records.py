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

import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_batch.submit.validation import CUSTOM_ID_HINT, InvalidRow, check_custom_id

RequestBuilder = Callable[[Mapping[str, Any]], Any]


class _Blank:
    """A blank line of a records file: no record, but it counts in the line numbers."""

    def __repr__(self) -> str:
        return "BLANK"


BLANK = _Blank()


def _fields_hint(record: Mapping[str, Any]) -> str:
    names = ", ".join(sorted(map(str, record))[:20])
    return f"these records have the fields: {names}"


def cached_system(system: str | list[Any]) -> list[Any]:
    """Return ``system`` as text blocks whose last block carries ``cache_control: ephemeral``."""
    if isinstance(system, str):
        return [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    if any(isinstance(block, Mapping) and "cache_control" in block for block in system):
        return list(system)
    if not system or not isinstance(system[-1], Mapping):
        return list(system)
    return [*system[:-1], {**system[-1], "cache_control": {"type": "ephemeral"}}]


@dataclass(frozen=True)
class RequestDefaults:
    """Values put into the params of every request that lacks them."""

    model: str | None = None
    max_tokens: int | None = None
    system: str | list[Any] | None = None
    cache_system_prompt: bool = True

    def __post_init__(self) -> None:
        # Built once: the same list object is shared by every request's params.
        if self.system is not None and self.cache_system_prompt:
            object.__setattr__(self, "_system_value", cached_system(self.system))
        else:
            object.__setattr__(self, "_system_value", self.system)

    @property
    def empty(self) -> bool:
        """Return True when there is nothing to apply."""
        return self.model is None and self.max_tokens is None and self.system is None

    def apply(self, request: Any) -> Any:
        """Return ``request`` with the defaults filled into its params (a new dict if changed)."""
        if self.empty or not isinstance(request, Mapping):
            return request
        params = request.get("params")
        if not isinstance(params, Mapping):
            return request
        missing = (
            (self.model is not None and "model" not in params)
            or (self.max_tokens is not None and "max_tokens" not in params)
            or (self.system is not None and "system" not in params)
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
            hint=_fields_hint(record),
        )
    value = record[field]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    problem = check_custom_id(value)
    if problem:
        return InvalidRow(problem, value if isinstance(value, str) else None, CUSTOM_ID_HINT)
    return str(value)


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
) -> Iterator[Any]:
    """Yield one request (or :class:`InvalidRow`, or ``BLANK`` for a blank line) per record, in order.

    With ``prompt_template`` the user message is ``prompt_template.format_map(record)``. With
    ``request_builder`` the callable receives the record and returns the params (a dict), the
    messages (a list) or the user message (a str); with both, the template gives the user
    message and the builder returns extra params merged on top (e.g. ``temperature``).
    """
    if prompt_template is None and request_builder is None:
        raise ValueError("records need prompt_template= and/or request_builder= to become requests")
    fields = template_fields(prompt_template) if prompt_template is not None else []
    for record in records:
        if isinstance(record, InvalidRow) or record is BLANK:
            yield record
            continue
        if not isinstance(record, Mapping):
            yield InvalidRow(f"a record must be a JSON object, got {type(record).__name__}")
            continue
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
        yield {"custom_id": custom_id, "params": params}
