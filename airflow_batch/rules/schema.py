"""Structured outputs: the job's JSON Schema, checked before any spend and compiled into a fast validator.

``output_schema`` is a JSON Schema dict or a Pydantic model class. :func:`job_schema` turns
it into a :class:`JobSchema`:

- ``schema``: the full schema, as the user means it. Every answer is validated against it.
- ``api_schema``: what is sent as ``output_config.format.schema``. Structured outputs accept a
  subset of JSON Schema: every object must say ``additionalProperties: false``; numeric bounds
  (``minimum``...), string lengths and patterns, and array lengths above 1 are not enforced by
  the API's grammar. Those are moved into the ``description`` (the model reads them) and
  enforced here instead, so an answer outside them is an ``invalid_output`` failure rather than
  a silent bad row. A Pydantic model is closed for the API (``additionalProperties: false`` is
  added: the model's fields are all there is); a dict schema must say it itself.
- anything structured outputs do not support (``oneOf``, ``not``, ``if``/``then``,
  ``patternProperties``, recursive ``$ref``...) is refused before any spend, naming the path.

Validation is compiled once per job (:mod:`airflow_batch.rules.validator`): the schema becomes
msgspec types (Structs with ``forbid_unknown_fields``, ``Literal`` enums, ``Meta`` constraints)
and an answer is checked by one C-level decode; constructs msgspec types cannot state (``anyOf``
over objects, ``allOf``, ``uniqueItems``) fall back to a ``jsonschema`` validator built once.
String ``format`` is left to the API's grammar, which enforces it. Pure: no I/O, no Airflow.

Checking one answer takes bounded time whatever the answer: a ``pattern`` runs on RE2, a
linear-time engine (Python's ``re`` backtracks: ``^(a+)+$`` took minutes on a 41-character
answer), so a pattern RE2 cannot run (lookarounds, backreferences) is refused when the DAG is
parsed; an answer nested too deeply to check, or not decodable, is reported invalid rather than
raised. A schema nested deeper than :data:`MAX_SCHEMA_DEPTH` is refused at parse.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from airflow_batch.rules.validator import SchemaError, Validator, linear_pattern, resolve_ref

SUPPORTED_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}
)
# Keywords the API's grammar enforces, and those it does not (moved to the description, checked here).
_API_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf",
        "allOf", "$ref", "$defs", "definitions", "description", "title", "default", "format", "examples",
    }
)  # fmt: skip
_LOCAL_KEYWORDS = {
    "minimum": "at least {}",
    "maximum": "at most {}",
    "exclusiveMinimum": "more than {}",
    "exclusiveMaximum": "less than {}",
    "multipleOf": "a multiple of {}",
    "minLength": "at least {} characters",
    "maxLength": "at most {} characters",
    "pattern": "matching the pattern {}",
    "minItems": "at least {} items",
    "maxItems": "at most {} items",
    "uniqueItems": "unique items",
}
_REFUSED_HINTS = {
    "oneOf": "use anyOf",
    "not": "state what is allowed instead",
    "if": "state the cases with anyOf",
    "patternProperties": "name the properties",
    "prefixItems": "use items",
    "contains": "use items",
}


#: JSON nesting levels a schema document may have (a property nested in an object is two): deeper
#: ones are refused at parse, where Python's recursion limit would stop the checks with a
#: RecursionError that names nothing.
MAX_SCHEMA_DEPTH = 100


@dataclass(frozen=True)
class JobSchema:
    """A job's output schema: what the user means, what the API is sent, and its compiled validator."""

    schema: dict[str, Any]
    api_schema: dict[str, Any]
    definitions: dict[str, Any] = field(default_factory=dict, repr=False)

    @cached_property
    def validator(self) -> Validator:
        """Return the compiled validator (built on first use: not at DAG parse time)."""
        return Validator(self.schema, self.definitions)

    @property
    def output_format(self) -> dict[str, Any]:
        """Return ``output_config.format`` for the requests."""
        return {"type": "json_schema", "schema": self.api_schema}


def job_schema(output_schema: Any) -> JobSchema:
    """Return the :class:`JobSchema` of a JSON Schema dict or a Pydantic model class; raise SchemaError."""
    closed = False
    if isinstance(output_schema, type) and hasattr(output_schema, "model_json_schema"):
        # A model's fields are all there is: its objects are closed, for the API and for checks.
        schema = _closed(_model_schema(output_schema))
        closed = True
    elif isinstance(output_schema, Mapping):
        _check_depth(output_schema, "output_schema", 0)
        schema = copy.deepcopy(dict(output_schema))
    else:
        raise SchemaError(
            "output_schema must be a JSON Schema dict or a Pydantic model class, "
            f"got {type(output_schema).__name__}"
        )
    if schema.get("type") != "object":
        raise SchemaError("output_schema: the top level must be an object (type: object)")
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    api_schema = _api_node(schema, "output_schema", definitions, closed, set())
    return JobSchema(schema=schema, api_schema=api_schema, definitions=definitions)


def _model_schema(model: Any) -> dict[str, Any]:
    """Return a Pydantic model's JSON Schema; raise SchemaError naming each field that has none."""
    try:
        schema: dict[str, Any] = model.model_json_schema()
    except Exception as exc:  # pydantic's PydanticInvalidForJsonSchema, PydanticUserError...
        from pydantic import TypeAdapter

        failing = []
        for name, info in getattr(model, "model_fields", {}).items():
            try:
                TypeAdapter(info.annotation).json_schema()
            except Exception:
                failing.append(f"{name} ({getattr(info.annotation, '__name__', info.annotation)})")
        where = f"field(s) {', '.join(failing)}" if failing else "a field"
        raise SchemaError(
            f"output_schema {model.__name__}: {where} of the model cannot be a JSON Schema ({exc}); "
            "give each field a JSON type (str, int, float, bool, list, a nested model...)"
        ) from None
    _check_depth(schema, f"output_schema {model.__name__}", 0)
    return schema


def _check_depth(node: Any, path: str, depth: int) -> None:
    """Raise SchemaError when ``node`` nests deeper than :data:`MAX_SCHEMA_DEPTH` (without recursing)."""
    stack = [(node, path, depth)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaError(
                f"{path}: the schema nests more than {MAX_SCHEMA_DEPTH} levels deep; flatten it"
            )
        if isinstance(node, Mapping):
            stack.extend((value, f"{path}.{key}", depth + 1) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, f"{path}[{i}]", depth + 1) for i, value in enumerate(node))


def _closed(node: Any) -> Any:
    """Return ``node`` with ``additionalProperties: false`` on every object that does not say otherwise."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    out = {key: _closed(value) for key, value in node.items()}
    for key in ("properties", "$defs", "definitions"):
        if isinstance(node.get(key), Mapping):
            out[key] = {name: _closed(sub) for name, sub in node[key].items()}
    if (node.get("type") == "object" or "properties" in node) and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def recorded_validator(schema: Mapping[str, Any]) -> Validator:
    """Return the validator of the schema a job recorded (``JobSchema.schema`` in ``job.json``).

    Not :func:`job_schema` again: the recorded schema of a Pydantic model is the model's own
    JSON Schema, closed only in what the API is sent, so checking it again as a dict schema
    would refuse it. It was checked when the DAG was parsed.
    """
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return Validator(schema, definitions)


def _api_node(node: Any, path: str, definitions: Mapping[str, Any], closed: bool, seen: set[str]) -> Any:
    """Return the API's version of one schema node, refusing what structured outputs do not support."""
    if not isinstance(node, Mapping):
        raise SchemaError(f"{path}: a schema must be an object, got {type(node).__name__}")
    out: dict[str, Any] = {}
    moved: list[str] = []
    for key, value in node.items():
        if key in ("$schema", "$id", "$comment"):
            continue  # annotations of the document, not constraints: not sent
        if key in _REFUSED_HINTS:
            raise SchemaError(
                f"{path}: {key!r} is not supported by structured outputs; {_REFUSED_HINTS[key]}"
            )
        if key in _LOCAL_KEYWORDS:
            if key == "pattern":
                linear_pattern(value, path)
            if key == "minItems" and value in (0, 1):
                out[key] = value  # the API enforces 0 and 1
            else:
                moved.append(_LOCAL_KEYWORDS[key].format(value))
            continue
        if key not in _API_KEYWORDS:
            raise SchemaError(f"{path}: the keyword {key!r} is not supported by structured outputs")
        if key == "$ref":
            name, target = resolve_ref(value, definitions, path)
            if name in seen:
                raise SchemaError(
                    f"{path}.$ref: {value!r} refers to itself: recursive schemas are not supported"
                )
            _api_node(target, f"{path}.$ref", definitions, closed, seen | {name})
            out[key] = value
        elif key == "properties":
            out[key] = {name: _api_node(sub, f"{path}.properties.{name}", definitions, closed, seen)
                        for name, sub in value.items()}  # fmt: skip
        elif key in ("$defs", "definitions"):
            out[key] = {name: _api_node(sub, f"{path}.{key}.{name}", definitions, closed, seen | {name})
                        for name, sub in value.items()}  # fmt: skip
        elif key == "items":
            out[key] = _api_node(value, f"{path}.items", definitions, closed, seen)
        elif key in ("anyOf", "allOf"):
            out[key] = [
                _api_node(sub, f"{path}.{key}[{i}]", definitions, closed, seen) for i, sub in enumerate(value)
            ]
        elif key == "format" and value not in SUPPORTED_FORMATS:
            raise SchemaError(
                f"{path}.format: {value!r} is not a supported string format "
                f"({', '.join(sorted(SUPPORTED_FORMATS))})"
            )
        elif key == "enum" and any(isinstance(item, (dict, list)) for item in value):
            raise SchemaError(f"{path}.enum: only strings, numbers, booleans and null may be enum values")
        else:
            out[key] = value
    types = node.get("type")
    is_object = types == "object" or (isinstance(types, list) and "object" in types) or "properties" in node
    if is_object:
        additional = node.get("additionalProperties")
        if additional is None and closed:
            out["additionalProperties"] = False
        elif additional is not False:
            raise SchemaError(
                f"{path}: objects need additionalProperties: false in structured outputs "
                f"(got {additional!r}); add it, or describe the output with a Pydantic model"
            )
    if moved:
        note = "Must be " + ", ".join(sorted(moved)) + "."
        described = str(out.get("description") or "").rstrip()
        if described and described[-1] not in ".!?":
            described += "."
        out["description"] = f"{described} {note}" if described else note
    return out
