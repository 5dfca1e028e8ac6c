"""Pure parts of the emulator: progress, settings, validation messages and token accounting."""

from __future__ import annotations

import math
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from airflow_batch.emulator.faults import ConfigError, EmulatorConfig, config_from_env
from airflow_batch.emulator.limits import queue_refusal, rate_refusal, spend_limit_refusal
from airflow_batch.emulator.processing import (
    batch_state,
    canceled,
    done_by,
    ends_at,
    new_schedule,
    processed_at,
    repaced,
    restarted,
)
from airflow_batch.emulator.responses import outcome_draw
from airflow_batch.emulator.store import DB_NAME, BatchStore
from airflow_batch.emulator.validation import InvalidBatch, parse_create_body
from airflow_batch.rules.tokens import Breakpoint, account_cache


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
    new_settings = {
        "AIRFLOW_BATCH_EMULATOR_INVALID_OUTPUT_RATE": "0.05",
        "AIRFLOW_BATCH_EMULATOR_REFUSAL_RATE": "0.01",
        "AIRFLOW_BATCH_EMULATOR_PAUSE_TURN_RATE": "0.2",
        "AIRFLOW_BATCH_EMULATOR_QUEUE_LIMIT": "200000",
        "AIRFLOW_BATCH_EMULATOR_CREATE_RATE_PER_MINUTE": "1000",
        "AIRFLOW_BATCH_EMULATOR_SPEND_LIMIT_REACHED": "true",
    }
    config = EmulatorConfig().updated(config_from_env(new_settings))
    assert (config.invalid_output_rate, config.refusal_rate, config.pause_turn_rate) == (0.05, 0.01, 0.2)
    assert (config.queue_limit, config.create_rate_per_minute, config.spend_limit_reached) == (
        200_000,
        1000,
        True,
    )


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

    first = account_cache(points, seen, min_tokens=0)
    assert (first.read, first.write_1h, first.write_5m, first.cached_prefix) == (0, 100, 200, 300)
    second = account_cache([points[0], replace(points[1], key=b"other-doc")], seen, min_tokens=0)
    assert (second.read, second.write_1h, second.write_5m) == (100, 0, 200)
    assert account_cache(points, seen, min_tokens=0).read == 300
    assert math.isclose(account_cache([], seen, min_tokens=0).read, 0)


def test_a_prefix_below_the_minimum_cacheable_length_is_no_cache_point() -> None:
    seen: set[bytes] = set()
    points = [Breakpoint(b"short", 500, "1h"), Breakpoint(b"long", 1_500, "5m")]

    first = account_cache(points, seen, min_tokens=1_024)
    assert (first.read, first.write_1h, first.write_5m, first.cached_prefix) == (0, 0, 1_500, 1_500)
    assert seen == {b"long"}
    assert account_cache(points[:1], seen, min_tokens=1_024).cached_prefix == 0


def test_request_i_is_processed_when_the_schedule_says() -> None:
    schedule = _schedule(n=10, rate=2.0, delay=5.0)  # created at 1,000
    assert [processed_at(schedule, i) for i in (0, 1, 9)] == [1_005.5, 1_006.0, 1_010.0]
    assert all(done_by(schedule, processed_at(schedule, i)) == i + 1 for i in range(10))
    assert ends_at(schedule) == 1_010.0
    assert processed_at(_schedule(rate=0.0, delay=5.0), 3) == 1_005.0  # paused: taken at its start


def test_queue_refusal_waits_for_the_batches_that_must_end() -> None:
    queue = [(160.0, 500), (120.0, 100)]  # (ends_at, requests) at now = 100
    assert queue_refusal(queue, 400, 1_000, 100.0) is None
    assert queue_refusal(queue, 400, None, 100.0) is None
    small = queue_refusal(queue, 500, 1_000, 100.0)
    assert small is not None and small.headers == {"retry-after": "20"}
    assert "processing queue" in small.message
    large = queue_refusal(queue, 900, 1_000, 100.0)
    assert large is not None and large.headers == {"retry-after": "60"}
    never = queue_refusal([], 1_001, 1_000, 100.0)
    assert never is not None and never.headers == {"x-should-retry": "false"}
    assert queue_refusal([(100.2, 1_000)], 1, 1_000, 100.0).headers == {"retry-after": "1"}  # type: ignore[union-attr]


def test_rate_refusal_counts_creates_in_the_last_minute() -> None:
    assert rate_refusal([10.0, 50.0], 3, 60.0) is None
    refused = rate_refusal([10.0, 50.0, 55.0], 3, 60.0)
    assert refused is not None and refused.headers == {"retry-after": "10"}
    assert rate_refusal([1.0, 50.0, 55.0], 3, 62.0) is None  # the oldest left the window


def test_spend_limit_refusal_names_the_first_of_next_month() -> None:
    december = spend_limit_refusal(1_796_000_000.0)  # 2026-11-30
    assert december.message.endswith("You will regain access on 2026-12-01 at 00:00 UTC.")
    assert spend_limit_refusal(1_798_700_000.0).message.endswith("on 2027-01-01 at 00:00 UTC.")  # 2026-12-31
    assert december.details == {"error_code": "enforced_spend_limit_reached"} and not december.headers


def test_a_store_from_an_older_emulator_is_upgraded_in_place(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.executescript(
        """
        CREATE TABLE batches (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
            num_requests INTEGER NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
            start_at REAL NOT NULL, anchor_time REAL NOT NULL, anchor_done INTEGER NOT NULL,
            rate REAL NOT NULL, cancel_initiated_at REAL, cancel_end REAL, final_succeeded INTEGER,
            final_errored INTEGER, final_canceled INTEGER, final_expired INTEGER);
        CREATE TABLE cache_entries (key BLOB PRIMARY KEY) WITHOUT ROWID;
        INSERT INTO batches VALUES
            (1, 'msgbatch_old', 2, 0, 86400, 0, 0, 0, 1e9, NULL, NULL, NULL, NULL, NULL, NULL);
        INSERT INTO cache_entries VALUES (x'00');
        """
    )
    conn.close()

    store = BatchStore(tmp_path)
    try:
        record = store.get("msgbatch_old", now=10.0)
        assert record is not None and record.workspace == "" and record.state.status == "ended"
        assert store.get("msgbatch_old", now=10.0, workspace="wrkspc_x") is None
        stats = store.stats(10.0)
        assert (stats["cache_entries"], stats["requests_queued"], stats["peak_requests_queued"]) == (1, 0, 0)
    finally:
        store.close()
