"""Pure parts of the emulator: progress, settings, validation messages and token accounting."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from airflow_batch.emulator.faults import ConfigError, EmulatorConfig, config_from_env
from airflow_batch.emulator.processing import (
    batch_state,
    canceled,
    done_by,
    new_schedule,
    repaced,
    restarted,
)
from airflow_batch.emulator.responses import outcome_draw
from airflow_batch.emulator.validation import InvalidBatch, parse_create_body
from airflow_batch.tokens import Breakpoint, account_cache


def _schedule(n: int = 100, rate: float = 10.0, delay: float = 0.0, ttl: float = 1_000.0):  # type: ignore[no-untyped-def]
    return new_schedule(
        num_requests=n, created_at=1_000.0, ttl_seconds=ttl, start_delay_seconds=delay, rate=rate
    )


def test_batch_ends_when_the_last_request_is_done() -> None:
    schedule = _schedule(n=100, rate=10, delay=5)

    assert batch_state(schedule, 1_000.0).status == "in_progress"
    assert done_by(schedule, 1_004.0) == 0
    assert done_by(schedule, 1_010.0) == 50
    assert batch_state(schedule, 1_014.99).status == "in_progress"
    state = batch_state(schedule, 1_015.0)
    assert (state.status, state.ended_at, state.done_at_end, state.end_reason) == (
        "ended",
        1_015.0,
        100,
        "completed",
    )


def test_paused_batch_expires_at_its_ttl() -> None:
    state = batch_state(_schedule(rate=0, ttl=60), 2_000.0)

    assert (state.status, state.ended_at, state.done_at_end, state.end_reason) == (
        "ended",
        1_060.0,
        0,
        "expired",
    )


def test_cancel_keeps_work_done_until_the_cancel_ends() -> None:
    schedule = canceled(_schedule(rate=10), 1_003.0, cancel_delay_seconds=2)

    assert batch_state(schedule, 1_004.0).status == "canceling"
    state = batch_state(schedule, 1_005.0)
    assert (state.status, state.done_at_end, state.end_reason) == ("ended", 50, "canceled")
    assert canceled(schedule, 1_004.0, 10) == schedule


def test_cancel_never_ends_in_the_cancel_response() -> None:
    schedule = canceled(_schedule(rate=0), 1_003.0, cancel_delay_seconds=0)

    assert batch_state(schedule, 1_003.0).status == "canceling"


def test_repacing_keeps_done_work_and_is_monotonic() -> None:
    slow = _schedule(n=100, rate=1)
    fast = repaced(slow, 1_010.0, rate=1_000)

    assert done_by(fast, 1_010.0) == 10
    assert batch_state(fast, 1_010.09).status == "ended"
    paused = repaced(slow, 1_020.0, rate=0)
    assert done_by(paused, 5_000.0) == 20


def test_start_delay_change_moves_only_batches_not_started() -> None:
    waiting = _schedule(delay=100)
    assert restarted(waiting, 1_010.0, 0).start_at == 1_000.0
    started = _schedule(delay=1)
    assert restarted(started, 1_010.0, 500) == started


def test_error_types_accept_list_mapping_and_flag_strings() -> None:
    base = EmulatorConfig()

    assert base.updated({"error_rate": 0.1, "error_types": "overloaded_error,api_error"}).error_rates() == {
        "overloaded_error": 0.05,
        "api_error": 0.05,
    }
    mapped = base.updated({"error_types": "overloaded_error=0.05,invalid_request_error=0.01"})
    assert mapped.error_rates() == {"overloaded_error": 0.05, "invalid_request_error": 0.01}
    assert mapped.to_json()["error_types"] == {"overloaded_error": 0.05, "invalid_request_error": 0.01}
    assert base.updated({"http_fault_statuses": "429,529,drop"}).http_fault_statuses == (429, 529, "drop")


@pytest.mark.parametrize(
    "changes",
    [
        {"error_rate": 1.5},
        {"http_fault_statuses": [418]},
        {"throughput": -1},
        {"nope": 1},
        {"max_requests": 0},
    ],
)
def test_bad_settings_are_rejected_with_their_name(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(changes))):
        EmulatorConfig().updated(changes)


def test_settings_come_from_environment_variables() -> None:
    env = {"AIRFLOW_BATCH_EMULATOR_ERROR_RATE": "0.05", "AIRFLOW_BATCH_EMULATOR_SEED": "9", "OTHER": "x"}

    assert config_from_env(env) == {"error_rate": "0.05", "seed": "9"}
    assert EmulatorConfig().updated(config_from_env(env)).seed == 9


def test_validation_names_the_request_index() -> None:
    body = (
        b'{"requests":[{"custom_id":"a","params":{"model":"m","max_tokens":1,"messages":[]}},'
        b'{"custom_id":"b","params":{"model":"m","max_tokens":"2","messages":[]}}]}'
    )

    with pytest.raises(InvalidBatch, match=r"^requests\.1\.params\.max_tokens: Expected `int`, got `str`$"):
        parse_create_body(body, max_requests=10)


def test_outcome_draw_depends_on_seed_batch_and_custom_id() -> None:
    draw = outcome_draw(1, 1, "a")

    assert 0 <= draw < 1
    assert draw == outcome_draw(1, 1, "a")
    assert len({draw, outcome_draw(2, 1, "a"), outcome_draw(1, 2, "a"), outcome_draw(1, 1, "b")}) == 4


def test_cache_reads_longest_seen_prefix_and_writes_the_rest() -> None:
    seen: set[bytes] = set()
    points = [Breakpoint(b"system", 100, "1h"), Breakpoint(b"doc", 300, "5m")]

    first = account_cache(points, seen)
    assert (first.read, first.write_1h, first.write_5m, first.cached_prefix) == (0, 100, 200, 300)
    second = account_cache([points[0], replace(points[1], key=b"other-doc")], seen)
    assert (second.read, second.write_1h, second.write_5m) == (100, 0, 200)
    assert account_cache(points, seen).read == 300
    assert math.isclose(account_cache([], seen).read, 0)
