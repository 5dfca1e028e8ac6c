"""The schema-instance generator: valid, varied, reproducible values, and values that break on purpose."""

from __future__ import annotations

import ipaddress
import json
import uuid
from datetime import date, datetime, time
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest

from airflow_batch.emulator.schema_instance import schema_instance, schema_violation

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time")
def _date_time(value: object) -> bool:
    return not isinstance(value, str) or bool(datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo)


@FORMATS.checks("time")
def _time(value: object) -> bool:
    return not isinstance(value, str) or time.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


@FORMATS.checks("uri")
def _uri(value: object) -> bool:
    return not isinstance(value, str) or bool(urlparse(value).scheme and urlparse(value).netloc)


SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "label": {"type": "string", "enum": ["spam", "ham", "unsure"]},
        "kind": {"const": "review"},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "even": {"type": "integer", "minimum": 0, "maximum": 20, "multipleOf": 2},
        "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "flag": {"type": "boolean"},
        "nothing": {"type": "null"},
        "maybe": {"type": ["integer", "null"]},
        "code": {"type": "string", "minLength": 12, "maxLength": 14},
        "tags": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 2,
            "maxItems": 4,
            "uniqueItems": True,
        },
        "when": {"type": "string", "format": "date-time"},
        "day": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "time"},
        "mail": {"type": "string", "format": "email"},
        "link": {"type": "string", "format": "uri"},
        "id": {"type": "string", "format": "uuid"},
        "ip4": {"type": "string", "format": "ipv4"},
        "ip6": {"type": "string", "format": "ipv6"},
        "host": {"type": "string", "format": "hostname"},
        "span": {"type": "string", "format": "duration"},
        "either": {"anyOf": [{"type": "string", "format": "email"}, {"$ref": "#/$defs/point"}]},
        "both": {
            "allOf": [
                {"$ref": "#/$defs/point"},
                {"properties": {"z": {"type": "integer"}}, "required": ["z"]},
            ]
        },
        "tree": {"$ref": "#/$defs/node"},
        "legacy": {"$ref": "#/definitions/old"},
    },
    "required": ["label", "kind", "stars", "tags", "when", "either", "both", "tree", "legacy"],
    "$defs": {
        "point": {
            "type": "object",
            "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
            "required": ["x", "y"],
        },
        "node": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["name", "children"],
        },
    },
    "definitions": {"old": {"type": "string", "enum": ["a", "b"]}},
}
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=FORMATS)


def test_instances_are_valid_for_every_seed() -> None:
    for seed in range(300):
        instance = schema_instance(SCHEMA, seed)
        errors = [error.message for error in VALIDATOR.iter_errors(instance)]
        assert not errors, (seed, errors)


def test_formats_are_well_formed_values_of_their_kind() -> None:
    full = {**SCHEMA, "required": list(SCHEMA["properties"])}
    instance = schema_instance(full, "formats")
    assert date.fromisoformat(instance["day"])
    assert uuid.UUID(instance["id"]).version == 4
    assert ipaddress.ip_address(instance["ip4"]).version == 4
    assert ipaddress.ip_address(instance["ip6"]).version == 6
    assert instance["mail"].count("@") == 1 and instance["span"].startswith("P")


def test_the_same_seed_gives_the_same_instance_and_seeds_vary_it() -> None:
    assert schema_instance(SCHEMA, "custom-1") == schema_instance(SCHEMA, "custom-1")
    instances = {json.dumps(schema_instance(SCHEMA, seed), sort_keys=True) for seed in range(50)}
    assert len(instances) == 50
    labels = {schema_instance(SCHEMA, seed)["label"] for seed in range(50)}
    assert labels == {"spam", "ham", "unsure"}
    optional_present = [("score" in schema_instance(SCHEMA, seed)) for seed in range(50)]
    assert any(optional_present) and not all(optional_present)


def test_recursive_schemas_end() -> None:
    def depth(node: dict[str, Any]) -> int:
        return 1 + max((depth(child) for child in node["children"]), default=0)

    assert max(depth(schema_instance(SCHEMA, seed)["tree"]) for seed in range(50)) <= 8


def test_each_violation_breaks_the_schema_and_says_where() -> None:
    reasons = set()
    for seed in range(200):
        broken = schema_violation(SCHEMA, seed)
        assert broken is not None
        value, why = broken
        assert not VALIDATOR.is_valid(value), (seed, why, value)
        reasons.add(why.split(" ", 1)[1].split(" ")[0])
    assert {"misses", "is", "has"} <= reasons  # missing required, wrong type/enum/const, extra property


@pytest.mark.parametrize("schema", [{}, {"anyOf": [{"type": "string"}, {"type": "integer"}]}, True])
def test_a_schema_that_accepts_anything_here_has_no_violation(schema: Any) -> None:
    assert schema_violation(schema, 1) is None


def test_bounds_a_description_states_in_words_are_followed_as_a_model_would() -> None:
    from pydantic import BaseModel, Field

    from airflow_batch.emulator.schema_instance import described
    from airflow_batch.rules.schema import job_schema

    class Review(BaseModel):
        stars: int = Field(ge=1, le=5)
        keywords: list[str] = Field(max_length=3)
        note: str = Field(max_length=12)

    schema = job_schema(Review)  # the bounds are moved into descriptions for the API
    assert "minimum" not in schema.api_schema["properties"]["stars"]
    for seed in range(300):
        answer = json.dumps(schema_instance(schema.api_schema, seed)).encode()
        assert schema.validator.check(answer) is None, answer
    sdk_style = described({"type": "integer", "description": "Stars {minimum: 2, maximum: 3}"})
    assert (sdk_style["minimum"], sdk_style["maximum"]) == (2, 3)
    stated = described({"type": "integer", "minimum": 4, "description": "Must be at least 1."})
    assert stated["minimum"] == 4  # a keyword the schema states wins


def test_a_schema_that_refers_to_itself_in_a_loop_still_gives_a_value() -> None:
    loops = {"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}, "b": {"$ref": "#/$defs/b"}}}
    assert schema_instance({**loops, "$ref": "#/$defs/a"}, 1) is not None
    assert isinstance(schema_instance({**loops, "$ref": "#/$defs/b"}, 1), (str, type(None)))
