"""Deterministic JSON instances of a JSON Schema: valid ones, and ones that break it on purpose.

:func:`schema_instance` returns a value valid against a schema, chosen by a seed (the same
seed always gives the same value; different seeds give different values where the schema
leaves room). :func:`schema_violation` returns a value that breaks the schema in one place
(a required property missing, a value outside an ``enum`` or ``const``, a value of the wrong
type, or a property ``additionalProperties: false`` forbids), and says where and how.

Keywords understood: ``type`` (one or a list), ``const``, ``enum``; strings with ``format``
(date-time, date, time, duration, email, hostname, uri, uri-reference, ipv4, ipv6, uuid)
or ``minLength``/``maxLength``; integers and numbers within ``minimum``/``maximum``/
``exclusiveMinimum``/``exclusiveMaximum`` and on ``multipleOf``; booleans; null; arrays with
``items``, ``prefixItems``, ``minItems``/``maxItems``, ``uniqueItems``; objects with
``properties``, ``required`` (always present), optional properties (present or not, by the
seed) and never a property the schema does not list; ``anyOf``/``oneOf`` (one branch, by the
seed), ``allOf`` (branches merged), ``$ref`` to any pointer inside the document (``#/$defs/x``,
``#/definitions/x``, ``#``). A schema without ``type`` takes it from its keywords
(``properties`` → object, ``items`` → array...), else it is a string. ``pattern`` is not
generated (a plain string is returned). Recursive schemas end: past ``MAX_DEPTH`` levels,
optional properties are left out, arrays take their shortest length and a union takes a
branch that needs no nesting when it has one.

Pure: standard library only, no I/O.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MAX_DEPTH = 6
_WORDS = (
    "amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "indigo", "juniper",
    "kestrel", "lumen", "maple", "nectar", "onyx", "prairie", "quartz", "raven", "sierra", "tundra",
)  # fmt: skip
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_SCALAR_TYPES = ("string", "integer", "number", "boolean", "null")
# A value of each JSON type, for a wrong-type violation.
_WRONG_VALUES: tuple[tuple[str, Any], ...] = (
    ("string", "not-a-valid-value"),
    ("integer", 12345),
    ("boolean", True),
    ("null", None),
    ("object", {"unexpected": True}),
)


def _seed_int(seed: int | str | bytes) -> int:
    if isinstance(seed, int):
        return seed
    data = seed.encode() if isinstance(seed, str) else seed
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def schema_instance(schema: Mapping[str, Any] | bool, seed: int | str | bytes) -> Any:
    """Return a JSON value valid against ``schema``, chosen reproducibly by ``seed``."""
    return _Generator(schema, seed).value(breakable=False)


def schema_violation(schema: Mapping[str, Any] | bool, seed: int | str | bytes) -> tuple[Any, str] | None:
    """Return ``(value, why)``: a JSON value that breaks ``schema`` in one place, and how.

    None when the schema leaves nothing to break (it accepts any value).
    """
    generator = _Generator(schema, seed)
    value = generator.value(breakable=True)
    if not generator.spots:
        return None
    spot = generator.spots[generator.rng.randrange(len(generator.spots))]
    return _broken(value, spot), spot.why


@dataclass(frozen=True)
class _Spot:
    """A place in a generated value that can be broken: its path, the replacement, and why it breaks."""

    path: tuple[str | int, ...]
    why: str
    replacement: Any = None
    remove_key: str | None = None
    add_key: str | None = None


def _json_path(path: Sequence[str | int]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _broken(value: Any, spot: _Spot) -> Any:
    """Return a copy of ``value`` with ``spot`` broken."""
    if not spot.path:
        return _apply(value, spot)
    head, rest = spot.path[0], spot.path[1:]
    if isinstance(value, dict):
        return {
            k: (_broken(v, _Spot(rest, **_spot_args(spot))) if k == head else v) for k, v in value.items()
        }
    copy = list(value)
    copy[head] = _broken(copy[head], _Spot(rest, **_spot_args(spot)))  # type: ignore[index]
    return copy


def _spot_args(spot: _Spot) -> dict[str, Any]:
    return {
        "why": spot.why,
        "replacement": spot.replacement,
        "remove_key": spot.remove_key,
        "add_key": spot.add_key,
    }


def _apply(value: Any, spot: _Spot) -> Any:
    if spot.remove_key is not None:
        return {k: v for k, v in value.items() if k != spot.remove_key}
    if spot.add_key is not None:
        return {**value, spot.add_key: "unexpected"}
    return spot.replacement


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


class _Generator:
    """Walks a schema once, building a value and noting where it could be broken."""

    def __init__(self, root: Mapping[str, Any] | bool, seed: int | str | bytes) -> None:
        self.root = root
        self.rng = random.Random(_seed_int(seed))
        self.spots: list[_Spot] = []

    def value(self, *, breakable: bool) -> Any:
        """Return a valid value; with ``breakable``, note in ``spots`` where it could be broken."""
        return self._any(self.root, (), 0, breakable=breakable)

    # ---- schema plumbing ---------------------------------------------------------------

    def _resolve(self, schema: Any, nesting: int = 0) -> Any:
        """Return ``schema`` with ``$ref`` replaced by its target and ``allOf`` merged in."""
        for _ in range(32):  # a chain of refs longer than this is a loop
            if not isinstance(schema, Mapping) or "$ref" not in schema:
                break
            target = self._pointer(str(schema["$ref"]))
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = _merged(target, siblings) if siblings and isinstance(target, Mapping) else target
        if isinstance(schema, Mapping) and "allOf" in schema:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                # An allOf that refers back to itself has no instance to build: stop there.
                merged = _merged(merged, self._resolve(part, nesting + 1) if nesting < 32 else {})
            schema = merged
        return schema

    def _pointer(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}  # remote references are not followed: anything goes
        node: Any = self.root
        for raw in ref[1:].split("/")[1:]:
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return {}
        return node

    def _types(self, schema: Mapping[str, Any]) -> list[str]:
        declared = schema.get("type")
        if isinstance(declared, str):
            return [declared]
        if isinstance(declared, list) and declared:
            return [str(t) for t in declared]
        if "properties" in schema or "required" in schema or "additionalProperties" in schema:
            return ["object"]
        if "items" in schema or "prefixItems" in schema or "minItems" in schema:
            return ["array"]
        if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
            return ["number"]
        return ["string"]

    # ---- values ------------------------------------------------------------------------

    def _any(self, schema: Any, path: tuple[str | int, ...], depth: int, *, breakable: bool) -> Any:
        schema = described(self._resolve(schema))
        if schema is True or schema == {}:
            return self._string({})
        if schema is False or not isinstance(schema, Mapping):
            return None
        if "const" in schema:
            if breakable:
                self.spots.append(
                    _Spot(path, f"{_json_path(path)} is not the const value", _other(schema["const"]))
                )
            return schema["const"]
        if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
            if breakable:
                outside = _outside(schema["enum"])
                self.spots.append(_Spot(path, f"{_json_path(path)} is not one of the enum values", outside))
            return schema["enum"][self.rng.randrange(len(schema["enum"]))]
        union = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(union, list) and union:
            rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            branch = self._branch(union, depth)
            # A broken value under a union may still match another branch: never break there.
            return self._any(_merged(rest, self._resolve(branch)), path, depth, breakable=False)
        types = self._types(schema)
        kind = self._type_choice(types, depth)
        if breakable and kind in _SCALAR_TYPES:
            wrong = next(((t, v) for t, v in _WRONG_VALUES if not _accepts(types, t)), None)
            if wrong is not None:
                why = f"{_json_path(path)} is {_a(wrong[0])}, not {_a(kind)}"
                self.spots.append(_Spot(path, why, wrong[1]))
        if kind == "object":
            return self._object(schema, path, depth, breakable=breakable)
        if kind == "array":
            return self._array(schema, path, depth, breakable=breakable)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _branch(self, union: list[Any], depth: int) -> Any:
        if depth >= MAX_DEPTH:
            for branch in union:
                resolved = self._resolve(branch)
                if isinstance(resolved, Mapping) and self._types(resolved)[0] in _SCALAR_TYPES:
                    return branch
        return union[self.rng.randrange(len(union))]

    def _type_choice(self, types: list[str], depth: int) -> str:
        if len(types) == 1:
            return types[0]
        if depth >= MAX_DEPTH and "null" in types:
            return "null"
        non_null = [t for t in types if t != "null"]
        if non_null and self.rng.random() < 0.8:
            return non_null[self.rng.randrange(len(non_null))]
        return types[self.rng.randrange(len(types))]

    def _object(
        self, schema: Mapping[str, Any], path: tuple[str | int, ...], depth: int, *, breakable: bool
    ) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = [name for name in schema.get("required") or () if isinstance(name, str)]
        out: dict[str, Any] = {}
        for name, subschema in properties.items():
            if name in required or (depth < MAX_DEPTH and self.rng.random() < 0.5):
                out[name] = self._any(subschema, (*path, name), depth + 1, breakable=breakable)
        for name in required:  # required but not described: any value will do
            if name not in out:
                out[name] = self._string({})
        minimum = int(schema.get("minProperties") or 0)
        extra = schema.get("additionalProperties", True)
        index = 0
        while len(out) < minimum and extra is not False:
            index += 1
            name = f"extra_{index}"
            out[name] = self._any(
                extra if isinstance(extra, Mapping) else {}, (*path, name), depth + 1, breakable=False
            )
        if breakable:
            for name in required:
                self.spots.append(
                    _Spot(path, f"{_json_path(path)} misses the required property {name!r}", remove_key=name)
                )
            if extra is False:
                self.spots.append(
                    _Spot(
                        path,
                        f"{_json_path(path)} has a property the schema does not allow",
                        add_key="unexpected_property",
                    )
                )
        return out

    def _array(
        self, schema: Mapping[str, Any], path: tuple[str | int, ...], depth: int, *, breakable: bool
    ) -> list[Any]:
        prefix = list(schema.get("prefixItems") or ())
        items = schema.get("items", {})
        low = int(schema.get("minItems") or 0)
        high = schema.get("maxItems")
        high = int(high) if high is not None else low + 3
        if depth >= MAX_DEPTH:
            count = low
        else:
            count = self.rng.randint(max(low, 1 if high >= 1 else 0), max(min(high, low + 3), low))
        unique = bool(schema.get("uniqueItems"))
        out: list[Any] = []
        attempts = 0
        while len(out) < count and attempts < count * 20 + 20:
            attempts += 1
            position = len(out)
            subschema = prefix[position] if position < len(prefix) else items
            if subschema is False:
                break
            value = self._any(subschema, (*path, position), depth + 1, breakable=breakable and not unique)
            if unique and value in out:
                continue
            out.append(value)
        return out

    def _integer(self, schema: Mapping[str, Any]) -> int:
        low, high = _bounds(schema, integer=True)
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            first, last = math.ceil(low / step), math.floor(high / step)
            if first <= last:
                return int(self.rng.randint(first, last) * step)
        return self.rng.randint(math.ceil(low), math.floor(high))

    def _number(self, schema: Mapping[str, Any]) -> float | int:
        low, high = _bounds(schema, integer=False)
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            first, last = math.ceil(low / step), math.floor(high / step)
            if first <= last:
                return self.rng.randint(first, last) * step
        value = round(low + (high - low) * self.rng.random(), 2)
        return min(max(value, low), high)

    def _string(self, schema: Mapping[str, Any]) -> str:
        rng = self.rng
        formatter = _FORMATS.get(str(schema.get("format")))
        if formatter is not None:
            return formatter(rng)
        words = [_WORDS[rng.randrange(len(_WORDS))] for _ in range(1 + rng.randrange(3))]
        text = " ".join(words)
        low = int(schema.get("minLength") or 0)
        high = schema.get("maxLength")
        if len(text) < low:
            text += "x" * (low - len(text))
        if high is not None:
            text = text[: int(high)]
        return text


_NUMBER = r"(-?\d+(?:\.\d+)?)"
#: Constraints a description states in words, as airflow_batch and the SDK write them for
#: structured outputs (whose grammar does not enforce them): a model reads and follows them.
_PHRASES = {
    "at least": "minimum",
    "at most": "maximum",
    "more than": "exclusiveMinimum",
    "less than": "exclusiveMaximum",
    "a multiple of": "multipleOf",
    **{
        key: key
        for key in ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "multipleOf")
    },
}
_BY_UNIT = {("minimum", "characters"): "minLength", ("maximum", "characters"): "maxLength",
            ("minimum", "items"): "minItems", ("maximum", "items"): "maxItems"}  # fmt: skip
_DESCRIBED = re.compile(
    r"\b(at least|at most|more than|less than|a multiple of|minimum|maximum|minLength|maxLength|minItems"
    rf"|maxItems|multipleOf)\s*[:=]?\s*{_NUMBER}(?:\s+(characters|items))?"
)


def described(schema: Any) -> Any:
    """Return ``schema`` with the constraints its description states in words added as keywords.

    A structured-outputs schema carries numeric, length and item-count bounds in its
    ``description`` (the API's grammar does not enforce them); the model reads them. So does
    the emulator, which is why a job's own validation of such bounds passes against it as it
    does against the API. Keywords the schema states itself win.
    """
    if not isinstance(schema, Mapping):
        return schema
    description = schema.get("description")
    if not isinstance(description, str) or not any(char.isdigit() for char in description):
        return schema
    found: dict[str, Any] = {}
    for match in _DESCRIBED.finditer(description):
        key = _PHRASES[match.group(1)]
        key = _BY_UNIT.get((key, match.group(3) or ""), key)
        if key not in schema and key not in found:
            number = float(match.group(2))
            found[key] = int(number) if number.is_integer() else number
    return {**schema, **found} if found else schema


def _moment(rng: random.Random) -> datetime:
    return _EPOCH + timedelta(seconds=rng.randrange(365 * 86_400))


def _name(rng: random.Random) -> str:
    return f"{_WORDS[rng.randrange(len(_WORDS))]}{rng.randrange(1, 1000)}"


# A value of each string format, made from the generator's random source.
_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date-time": lambda rng: _moment(rng).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "date": lambda rng: _moment(rng).strftime("%Y-%m-%d"),
    "time": lambda rng: _moment(rng).strftime("%H:%M:%SZ"),
    "duration": lambda rng: f"P{rng.randrange(1, 30)}DT{rng.randrange(24)}H{rng.randrange(60)}M",
    "email": lambda rng: f"{_name(rng)}@example.com",
    "idn-email": lambda rng: f"{_name(rng)}@example.com",
    "hostname": lambda rng: f"{_name(rng)}.example.com",
    "idn-hostname": lambda rng: f"{_name(rng)}.example.com",
    "uri": lambda rng: f"https://example.com/{_name(rng)}",
    "iri": lambda rng: f"https://example.com/{_name(rng)}",
    "uri-reference": lambda rng: f"/{_name(rng)}",
    "ipv4": lambda rng: f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
    "ipv6": lambda rng: f"2001:db8::{rng.randrange(65536):x}:{rng.randrange(1, 65536):x}",
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
}


def _bounds(schema: Mapping[str, Any], *, integer: bool) -> tuple[float, float]:
    """Return the inclusive range a number must fall in (a default span where the schema is open)."""
    nudge = 1 if integer else 0.01
    low: float | None = None
    high: float | None = None
    if isinstance(schema.get("minimum"), (int, float)):
        low = schema["minimum"]
    if isinstance(schema.get("exclusiveMinimum"), (int, float)):
        low = max(low if low is not None else -math.inf, schema["exclusiveMinimum"] + nudge)
    if isinstance(schema.get("maximum"), (int, float)):
        high = schema["maximum"]
    if isinstance(schema.get("exclusiveMaximum"), (int, float)):
        high = min(high if high is not None else math.inf, schema["exclusiveMaximum"] - nudge)
    if low is None and high is None:
        low, high = 0, 100
    elif low is None:
        assert high is not None
        low = high - 100
    elif high is None:
        high = low + 100
    return low, high


def _merged(base: Any, extra: Any) -> dict[str, Any]:
    """Return two object schemas combined (``allOf``): properties merged, ``required`` united."""
    if not isinstance(base, Mapping):
        base = {}
    if not isinstance(extra, Mapping):
        return dict(base)
    out = {**base, **extra}
    if "properties" in base and "properties" in extra:
        out["properties"] = {**base["properties"], **extra["properties"]}
    if "required" in base and "required" in extra:
        out["required"] = list(dict.fromkeys([*base["required"], *extra["required"]]))
    return out


def _accepts(types: list[str], json_type: str) -> bool:
    return json_type in types or (json_type == "integer" and "number" in types)


def _other(value: Any) -> Any:
    """Return a value different from ``value``."""
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return "other"


def _outside(enum: list[Any]) -> Any:
    """Return a value that is not in ``enum``, of the type of its first member where possible."""
    for candidate in (_other(enum[0]), "not-an-allowed-value", 987_654_321, None, {"unexpected": True}):
        if not any(_json_type(member) == _json_type(candidate) and member == candidate for member in enum):
            return candidate
    return [enum]


def _a(json_type: str) -> str:
    return ("an " if json_type[0] in "aeiou" else "a ") + json_type
