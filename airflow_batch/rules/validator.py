"""Checking one answer against a job's full schema, compiled once, in time bounded whatever the answer.

The schema becomes msgspec types (Structs with ``forbid_unknown_fields``, ``Literal`` enums,
``Meta`` constraints) and an answer is checked by one C-level decode; constructs msgspec types
cannot state (``anyOf`` over objects, ``allOf``, ``uniqueItems``) fall back to a ``jsonschema``
validator built once. A ``pattern`` runs on RE2, a linear-time engine. What a job's schema is
and what the API is sent are in :mod:`airflow_batch.rules.schema`. Pure: no I/O, no Airflow.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import msgspec
import re2


class SchemaError(ValueError):
    """The schema is not one structured outputs accept; the message names the path and the fix."""


def resolve_ref(ref: str, definitions: Mapping[str, Any], path: str) -> tuple[str, Mapping[str, Any]]:
    """Return the name and node of a local ``$ref``; raise SchemaError for any other reference."""
    match = re.fullmatch(r"#/(?:\$defs|definitions)/(.+)", ref)
    if not match or match[1] not in definitions:
        raise SchemaError(
            f"{path}.$ref: {ref!r} is not a local definition (#/$defs/...); external refs are refused"
        )
    return match[1], definitions[match[1]]


_re2_compile = functools.lru_cache(maxsize=1024)(re2.compile)


def linear_pattern(pattern: Any, path: str) -> Any:
    """Return ``pattern`` compiled by RE2 (linear time); raise SchemaError if RE2 cannot run it."""
    if not isinstance(pattern, str):
        raise SchemaError(f"{path}.pattern: a pattern must be a string, got {type(pattern).__name__}")
    try:
        return _re2_compile(pattern)
    except re2.error as exc:
        raise SchemaError(
            f"{path}.pattern: {pattern!r} cannot be checked in linear time ({exc}); answers are matched "
            "with RE2, which has no lookarounds or backreferences: state the pattern without them"
        ) from None


class _Matching:
    """A string matching a pattern (and length bounds), checked by :func:`_decode_hook` with RE2.

    msgspec's own ``Meta(pattern=...)`` uses Python's backtracking ``re``. One subclass per
    string node; the decoded value is only checked, never kept, so one instance stands for all.
    """

    __slots__ = ()
    regex: Any
    min_length: int | None
    max_length: int | None
    instance: _Matching


def _matching(node: Mapping[str, Any], name: str) -> type[_Matching]:
    kind: type[_Matching] = type(
        f"Matching_{re.sub(r'[^A-Za-z0-9_]', '_', name)}",
        (_Matching,),
        {
            "__slots__": (),
            "regex": linear_pattern(node["pattern"], name),
            "min_length": node.get("minLength"),
            "max_length": node.get("maxLength"),
        },
    )
    kind.instance = kind()
    return kind


def _decode_hook(kind: type, value: Any) -> Any:
    """Check a string against its :class:`_Matching` type (raising ValueError makes it a ValidationError)."""
    if not isinstance(value, str):
        raise ValueError(f"Expected `str`, got `{type(value).__name__}`")
    assert issubclass(kind, _Matching)
    if kind.min_length is not None and len(value) < kind.min_length:
        raise ValueError(f"Expected `str` of length >= {kind.min_length}")
    if kind.max_length is not None and len(value) > kind.max_length:
        raise ValueError(f"Expected `str` of length <= {kind.max_length}")
    if not kind.regex.search(value):
        raise ValueError(f"Expected `str` matching regex {kind.regex.pattern!r}")
    return kind.instance


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """jsonschema's ``pattern`` keyword on RE2 (its own uses ``re``, which backtracks)."""
    import jsonschema

    if validator.is_type(instance, "string") and not linear_pattern(pattern, "$").search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


class _Unsupported(Exception):
    """A schema construct msgspec types cannot state: validate with jsonschema instead."""


_SIMPLE = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}


def _meta(node: Mapping[str, Any], kind: str) -> msgspec.Meta | None:
    constraints: dict[str, Any] = {}
    if kind in ("integer", "number"):
        for key, name in (("minimum", "ge"), ("maximum", "le"), ("exclusiveMinimum", "gt"),
                          ("exclusiveMaximum", "lt"), ("multipleOf", "multiple_of")):  # fmt: skip
            if key in node:
                constraints[name] = node[key]
    elif kind == "string":
        for key, name in (("minLength", "min_length"), ("maxLength", "max_length"), ("pattern", "pattern")):
            if key in node:
                constraints[name] = node[key]
    elif kind == "array":
        for key, name in (("minItems", "min_length"), ("maxItems", "max_length")):
            if key in node:
                constraints[name] = node[key]
    return msgspec.Meta(**constraints) if constraints else None


class _Compiler:
    def __init__(self, definitions: Mapping[str, Any]) -> None:
        self.definitions = definitions
        self.structs = 0

    def type_of(self, node: Mapping[str, Any], name: str) -> Any:
        if "$ref" in node:
            _, target = resolve_ref(node["$ref"], self.definitions, name)
            return self.type_of(target, name)
        if "allOf" in node or "uniqueItems" in node:
            raise _Unsupported  # checked exactly by jsonschema
        if "anyOf" in node:
            options = [self.type_of(sub, f"{name}{i}") for i, sub in enumerate(node["anyOf"])]
            return _union(options)
        if "const" in node:
            return Literal[node["const"]]  # type: ignore[valid-type]
        if "enum" in node:
            return Literal[tuple(node["enum"])]  # type: ignore[valid-type]
        kind = node.get("type")
        if isinstance(kind, list):
            return _union([self.type_of({**node, "type": one}, name) for one in kind])
        if kind == "object" or "properties" in node:
            return self.struct(node, name)
        if kind == "array":
            item = self.type_of(node.get("items", {}), f"{name}Item") if node.get("items") else Any
            meta = _meta(node, "array")
            return Annotated[list[item], meta] if meta else list[item]  # type: ignore[valid-type]
        if kind == "string" and "pattern" in node:
            return _matching(node, name)
        if kind in _SIMPLE:
            base = _SIMPLE[kind]
            if kind == "number":
                base = float  # msgspec accepts ints for float
            meta = _meta(node, kind)
            return Annotated[base, meta] if meta else base
        if not kind:
            return Any
        raise _Unsupported

    def struct(self, node: Mapping[str, Any], name: str) -> Any:
        self.structs += 1
        required = set(node.get("required", ()))
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for prop, sub in node.get("properties", {}).items():
            kind = self.type_of(sub, f"{name}_{prop}")
            fields.append(
                (prop, kind) if prop in required else (prop, kind | msgspec.UnsetType, msgspec.UNSET)
            )
        fields.sort(key=len)  # required fields (no default) first, as a Struct needs
        return msgspec.defstruct(
            f"Output{self.structs}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}",
            fields,
            forbid_unknown_fields=True,
            gc=False,  # an answer decoded to be checked, then dropped: no cycles to track
        )


def _union(options: list[Any]) -> Any:
    structs = [
        option for option in options if isinstance(option, type) and issubclass(option, msgspec.Struct)
    ]
    if len(structs) > 1:
        raise _Unsupported  # msgspec needs a tag to tell structs apart
    union = options[0]
    for option in options[1:]:
        union = union | option
    return union


class Validator:
    """Checks one answer's JSON text against the job's full schema; compiled once."""

    def __init__(self, schema: Mapping[str, Any], definitions: Mapping[str, Any]) -> None:
        #: The schema it checks, in full (part of the answer store's scope of a job's answers).
        self.schema = schema
        self._decoder: msgspec.json.Decoder[Any] | None
        try:
            self._decoder = msgspec.json.Decoder(
                _Compiler(definitions).type_of(schema, "Answer"), dec_hook=_decode_hook
            )
        # TypeError: a union msgspec cannot state; NotImplementedError: an enum/const above int64.
        except (_Unsupported, TypeError, NotImplementedError):
            self._decoder = None
        import jsonschema

        base = jsonschema.validators.validator_for(schema)
        checker = jsonschema.validators.extend(base, {"pattern": _re2_pattern})
        self._fallback = checker(schema, format_checker=jsonschema.FormatChecker())
        self._plain = msgspec.json.Decoder()

    @property
    def compiled(self) -> bool:
        """Return whether answers are checked by the compiled msgspec types (the fast path)."""
        return self._decoder is not None

    @property
    def decode(self) -> Callable[[bytes | str], Any] | None:
        """Return the compiled decoder's ``decode`` (raises on an invalid answer), or None.

        The hot loop of a gather calls it directly and asks :meth:`check` only for the reason
        of an answer it refused."""
        return self._decoder.decode if self._decoder is not None else None

    def check(self, text: bytes | str) -> str | None:
        """Return why the answer ``text`` is not valid JSON of the schema (path and reason), or None.

        Never raises for an answer: one too deeply nested to check, or not text, is a reason.
        """
        try:
            return self._check(text)
        except RecursionError:
            return "$: the answer is nested too deeply to check"
        except UnicodeError as exc:
            return f"not text: {exc}"

    def _check(self, text: bytes | str) -> str | None:
        if self._decoder is not None:
            try:
                self._decoder.decode(text)
                return None
            except msgspec.ValidationError as exc:
                return _located(str(exc))
            except msgspec.DecodeError as exc:
                return f"not JSON: {exc}"
        try:
            value = self._plain.decode(text)
        except msgspec.DecodeError as exc:
            return f"not JSON: {exc}"
        error = next(
            iter(sorted(self._fallback.iter_errors(value), key=lambda e: list(e.absolute_path))), None
        )
        if error is None:
            return None
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        return f"{where}: {error.message}"


def _located(message: str) -> str:
    match = re.match(r"^(?P<message>.*) - at `(?P<path>\$[^`]*)`$", message)
    return f"{match['path']}: {match['message']}" if match else f"$: {message}"
