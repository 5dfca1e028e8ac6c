"""The emulator's independent check of a request: the request types the installed SDK generates from the API.

The create validation (:mod:`airflow_batch.emulator.validation`) applies the package's own rules
(:mod:`airflow_batch.rules.params`), the ones submit applies; alone, the emulator would accept exactly
what submit accepts, by construction, and neither could tell that the API disagrees. So each
request is also checked against the SDK's generated TypedDicts
(``anthropic.types.messages.batch_create_params.Request``, the beta one for a request sent with
``anthropic-beta`` headers): every key must be one the type declares, every required key must
be there, and every value must have the declared type (literals, unions told apart by their
``type`` tag, lists, nested TypedDicts).

The check reads the type hints itself instead of building a pydantic validator from them:
pydantic takes seconds to build one for these unions and a quarter of a millisecond per
request, too slow for an emulator that takes creates of 100,000 requests; this walk costs a few
microseconds per request and builds nothing up front.

With betas, a parameter or tool type the installed SDK does not know passes (a beta may add
it after the SDK's release, as our rules let it); everything the SDK knows is checked.

What the SDK types do not say, or say otherwise on purpose: ``temperature``, ``top_p`` and
``top_k`` are gone from the SDK's types (SDK 2.13) but still taken by the API on models before
Claude Opus 4.7; they are set aside here and the per-model rules
(:func:`airflow_batch.emulator.models.refusal`) decide them, per request.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any, Literal, Union

import typing_extensions

from airflow_batch.rules.models import SAMPLING_PARAMETERS

_REQUIRED = (typing.Required, typing_extensions.Required)
_NOT_REQUIRED = (typing.NotRequired, typing_extensions.NotRequired)
_LISTS = (list, Iterable, Sequence, typing.Iterable, typing.Sequence, typing.List)  # noqa: UP006
_DICTS = (dict, Mapping, typing.Dict, typing.Mapping)  # noqa: UP006
_UNIONS = (Union, types.UnionType)


@cache
def _request_type(beta: bool) -> Any:
    if beta:
        from anthropic.types.beta.messages.batch_create_params import Request
    else:
        from anthropic.types.messages.batch_create_params import Request  # type: ignore[assignment]
    return Request


@cache
def _fields(typed_dict: Any) -> dict[str, tuple[Any, bool]]:
    """Return a TypedDict's keys: the value's type and whether the key is required."""
    hints = typing.get_type_hints(typed_dict, include_extras=True)
    total = getattr(typed_dict, "__total__", True)
    fields: dict[str, tuple[Any, bool]] = {}
    for name, hint in hints.items():
        required = total
        while typing.get_origin(hint) in (*_REQUIRED, *_NOT_REQUIRED, typing.Annotated):
            origin = typing.get_origin(hint)
            required = True if origin in _REQUIRED else False if origin in _NOT_REQUIRED else required
            hint = typing.get_args(hint)[0]
        fields[name] = (hint, required)
    return fields


def _tag(hint: Any) -> str | None:
    """Return the ``type`` literal of a TypedDict that has one (how union members are told apart)."""
    if not typing_extensions.is_typeddict(hint):
        return None
    kind = _fields(hint).get("type")
    if kind is None or typing.get_origin(kind[0]) is not Literal:
        return None
    values = typing.get_args(kind[0])
    return values[0] if len(values) == 1 and isinstance(values[0], str) else None


def _problem(value: Any, hint: Any, path: str) -> str | None:
    """Return the first way ``value`` does not have type ``hint`` (with the path to it), or None."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return None
    if origin is typing.Annotated:
        return _problem(value, typing.get_args(hint)[0], path)
    if hint is None or hint is type(None):
        return None if value is None else f"{path}: Input should be null"
    if origin is Literal:
        choices = typing.get_args(hint)
        return None if value in choices else f"{path}: Input should be one of {list(choices)!r}"
    if origin in _UNIONS:
        return _union_problem(value, typing.get_args(hint), path)
    if typing_extensions.is_typeddict(hint):
        return _typed_dict_problem(value, hint, path)
    if hint in (str, int, float, bool):
        ok = (isinstance(value, hint) and not (hint is int and isinstance(value, bool))) or (
            hint is float and isinstance(value, int) and not isinstance(value, bool)
        )
        return None if ok else f"{path}: Input should be a valid {hint.__name__}"
    if origin in _LISTS or hint in _LISTS:
        if not isinstance(value, list):
            return f"{path}: Input should be a valid list"
        (item,) = typing.get_args(hint) or (Any,)
        for index, element in enumerate(value):
            problem = _problem(element, item, f"{path}.{index}")
            if problem:
                return problem
        return None
    if origin in _DICTS or hint in _DICTS:
        if not isinstance(value, dict):
            return f"{path}: Input should be a valid dictionary"
        args = typing.get_args(hint)
        if len(args) == 2:
            for key, element in value.items():
                problem = _problem(element, args[1], f"{path}.{key}")
                if problem:
                    return problem
        return None
    if isinstance(hint, type):  # a response model (a block echoed back): its Param form is the one to use
        return None if isinstance(value, hint) else f"{path}: Input should be a valid {hint.__name__}"
    return None  # a kind the request types do not use for JSON values: not checked


def _union_problem(value: Any, members: tuple[Any, ...], path: str) -> str | None:
    tags = {tag: member for member in members if (tag := _tag(member))}
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(kind, str) and kind in tags:  # the tag names the member: its problem is the one
        return _problem(value, tags[kind], path)
    problems = []
    for member in members:
        problem = _problem(value, member, path)
        if problem is None:
            return None
        problems.append(problem)
    if kind is not None and tags:
        return f"{path}.type: Input should be one of {sorted(tags)!r}, got {kind!r}"
    # The member that got furthest into the value says best what is wrong with it.
    return max(problems, key=lambda problem: problem.partition(":")[0].count("."))


def _typed_dict_problem(value: Any, typed_dict: Any, path: str) -> str | None:
    if not isinstance(value, dict):
        return f"{path}: Input should be a valid dictionary"
    fields = _fields(typed_dict)
    for key in value:
        if key not in fields:
            return f"{path}.{key}: Extra inputs are not permitted"
    for name, (hint, required) in fields.items():
        if name in value:
            problem = _problem(value[name], hint, f"{path}.{name}")
            if problem:
                return problem
        elif required:
            return f"{path}.{name}: Field required"
    return None


def _set_aside(request: Any) -> Any:
    """Return ``request`` without the sampling parameters the SDK types dropped (see the module doc)."""
    params = request.get("params") if isinstance(request, dict) else None
    if not isinstance(params, dict) or not any(name in params for name in SAMPLING_PARAMETERS):
        return request
    kept = {key: value for key, value in params.items() if key not in SAMPLING_PARAMETERS}
    return {**request, "params": kept}


def _known_to_the_sdk(request: Any) -> Any:
    """Return ``request`` without the parameters and tool types the installed SDK's beta type lacks.

    A request with betas may carry what a beta added after this SDK was released (our rules let
    it pass too); what the SDK does know is still checked.
    """
    params = request.get("params") if isinstance(request, dict) else None
    if not isinstance(params, dict):
        return request
    fields = _fields(_fields(_request_type(True))["params"][0])
    kept = {key: value for key, value in params.items() if key in fields}
    tools = kept.get("tools")
    if isinstance(tools, list):
        (member,) = typing.get_args(fields["tools"][0]) or (Any,)
        known = {_tag(option) for option in typing.get_args(member)}
        kept["tools"] = [tool for tool in tools if not isinstance(tool, dict) or tool.get("type") in known]
    return {**request, "params": kept}


def sdk_problem(request: Any, *, beta: bool, index: int = 0) -> str | None:
    """Return why the SDK's request types refuse ``request`` (the ``index``-th of a create), or None.

    The message names the field as the API's do (``requests.3.params.system: ...``).
    """
    request = _set_aside(request)
    if beta:
        request = _known_to_the_sdk(request)
    problem = _problem(request, _request_type(beta), f"requests.{index}")
    return f"{problem} (the SDK's request types)" if problem else None
