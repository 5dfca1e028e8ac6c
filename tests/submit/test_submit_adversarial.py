"""What an adversarial input gets before any spend: a clear error naming the row, and nothing created."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import pytest

from airflow_batch.api import BatchesApi
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.exceptions import InvalidRequestsError, UnknownModelError
from airflow_batch.manifest import JobIdentity
from airflow_batch.storage import as_path
from airflow_batch.submit.inputs import input_rows
from airflow_batch.submit.records import RequestDefaults, records_to_requests
from airflow_batch.submit.round import SubmitSettings, submit_round

MODEL = "claude-haiku-4-5"


def request_line(custom_id: str, text: str = "hello", **params: Any) -> bytes:
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": text}], **params}
    return json.dumps({"custom_id": custom_id, "params": body}).encode()


def submit(client: anthropic.Anthropic, rows: Any, job: Path, **kwargs: Any) -> Any:
    return submit_round(
        BatchesApi(client),
        rows,
        job=as_path(str(job)),
        round_number=0,
        identity=JobIdentity("anthropic_default"),
        settings=SubmitSettings(count_tokens_sample=0),
        **kwargs,
    )


def test_invalid_utf8_and_a_row_nested_100000_deep_name_their_line_in_a_requests_file(
    emulator: EmulatorProcess, sync_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    source = tmp_path / "requests.jsonl"
    deep = b'{"custom_id": "deep", "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    bad_utf8 = request_line("utf8").replace(b"hello", b"caf\xe9")
    source.write_bytes(b"\n".join([request_line("a"), b"", bad_utf8, deep, request_line("b")]) + b"\n")

    with pytest.raises(InvalidRequestsError) as raised:
        submit(sync_client, input_rows(str(source), "requests"), tmp_path / "job", row_label="line")

    message = str(raised.value)
    assert "line 3 (no custom_id): not valid UTF-8" in message  # the blank line 2 is counted
    assert "line 4 (no custom_id): not valid JSON: nested too deeply" in message
    assert emulator.batch_count() == 0


def test_a_records_file_with_bad_bytes_names_the_line_of_each(
    emulator: EmulatorProcess, sync_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    source = tmp_path / "records.jsonl"
    source.write_bytes(
        b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n' + b"[" * 100_000 + b"\n"
    )
    rows = records_to_requests(
        input_rows(str(source), "records"), prompt_template="{text}", custom_id_field="id"
    )

    with pytest.raises(InvalidRequestsError) as raised:
        submit(sync_client, rows, tmp_path / "job", row_label="line", defaults=RequestDefaults(MODEL, 8))

    assert "line 2 (no custom_id): not valid UTF-8" in str(raised.value)
    assert "line 3 (no custom_id): not valid JSON: nested too deeply" in str(raised.value)
    assert emulator.batch_count() == 0


def test_a_request_beyond_the_models_context_window_is_refused_before_any_spend(
    emulator: EmulatorProcess, sync_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    huge = "x" * 1_000_000  # about 250,000 tokens; Haiku 4.5 reads at most 200,000
    rows = [request_line("small"), request_line("huge", huge)]

    with pytest.raises(InvalidRequestsError) as raised:
        submit(sync_client, rows, tmp_path / "job")

    assert (
        "row 2 (custom_id 'huge'): the request's input is about 250,000 tokens (estimated locally), "
        in str(raised.value)
    )
    assert "above the 200,000-token context window of claude-haiku-4-5" in str(raised.value)
    assert emulator.batch_count() == 0


def test_an_unknown_model_is_refused_before_any_spend_with_close_matches(
    emulator: EmulatorProcess, sync_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    rows = [request_line("a", model="claude-haiku-4.5"), request_line("b", model="claude-haiku-4.5")]

    with pytest.raises(UnknownModelError) as raised:
        submit(sync_client, rows, tmp_path / "job")

    assert "does not serve the model(s) 'claude-haiku-4.5' (did you mean 'claude-haiku-4-5'" in str(
        raised.value
    )
    assert emulator.batch_count() == 0
