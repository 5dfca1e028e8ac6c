"""submit_round with the real SDK against the emulator: limits, bad input, budget, faults, crashes."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import msgspec
import pytest

from airflow_batch import layout
from airflow_batch.api import BatchesApi
from airflow_batch.emulator.faults import EmulatorConfig
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.exceptions import BudgetExceededError, InputChangedError, InvalidRequestsError
from airflow_batch.manifest import JobIdentity
from airflow_batch.storage import as_path, iter_jsonl_lines, read_json
from airflow_batch.submit.records import RequestDefaults, records_to_requests
from airflow_batch.submit.round import SubmitSettings, submit_round
from airflow_batch.submit.shared_prompts import iter_sent_lines
from airflow_batch.submit.validation import MAX_REQUESTS_PER_BATCH

MODEL = "claude-haiku-4-5"


def req(cid: str, text: str = "hi", **params: Any) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": text}], **params}
    return {"custom_id": cid, "params": body}


def requests(n: int) -> list[dict[str, Any]]:
    return [req(f"r{i}", f"hello {i}") for i in range(n)]


def submit(client: anthropic.Anthropic, rows: Any, job: Path, **settings: Any) -> Any:
    settings.setdefault("count_tokens_sample", 0)
    return submit_round(
        BatchesApi(client), rows, job=as_path(str(job)), round_number=0,
        identity=JobIdentity("anthropic_default"), settings=SubmitSettings(**settings),
    )  # fmt: skip


@pytest.fixture
def session_client(emulator_session: EmulatorProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=emulator_session.base_url, api_key="test-key") as client:
        yield client


def test_requests_stream_from_a_file_into_batches_by_count_at_the_limit(
    emulator: EmulatorProcess, sync_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    # The default limit is the API's (100,000 requests a batch); the split is proved at a limit of
    # 1,000 that the emulator enforces too, so 2,501 requests cost what 250,001 would prove.
    assert SubmitSettings().max_requests_per_batch == MAX_REQUESTS_PER_BATCH == EmulatorConfig().max_requests
    assert MAX_REQUESTS_PER_BATCH == 100_000
    emulator.configure(throughput=0, max_requests=1_000)  # nothing to process: this test is about creation
    source = tmp_path / "requests.jsonl"
    line = b'{"custom_id":"r%d","params":{"model":"claude-haiku-4-5","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}}\n'  # noqa: E501
    with source.open("wb") as handle:
        for i in range(2_501):
            handle.write(line % i)
    rows = iter_jsonl_lines(as_path(str(source)))
    manifest = submit(sync_client, rows, tmp_path / "job", max_requests_per_batch=1_000)
    assert [b["requests"] for b in manifest["batches"]] == [1_000, 1_000, 501]
    assert emulator.batch_count() == 3
    for record in manifest["batches"]:
        batch = sync_client.messages.batches.retrieve(record["batch_id"])
        assert batch.request_counts.processing == record["requests"]
    assert manifest["requests"] == 2_501 and manifest["invalid"] == 0


def test_byte_limit_splits_batches_by_body_size(
    emulator_session: EmulatorProcess, session_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    rows = [req(f"r{i:02d}", "x" * 1000) for i in range(30)]
    before = emulator_session.batch_count()
    manifest = submit(session_client, rows, tmp_path / "job", max_bytes_per_batch=10_000)
    line = len(msgspec.json.encode(rows[0]))  # 1,116 bytes; each line adds a comma too
    sizes = [b["bytes"] for b in manifest["batches"]]
    assert [b["requests"] for b in manifest["batches"]] == [8, 8, 8, 6]
    assert max(sizes) <= 10_000 and all(size + line + 1 > 10_000 for size in sizes[:3])
    assert emulator_session.batch_count() - before == 4


def test_records_with_a_prompt_template_and_defaults_become_cached_requests(
    emulator_session: EmulatorProcess, session_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    records = [{"sku": f"p{i}", "name": f"Lamp {i}"} for i in range(12)]
    rows = records_to_requests(records, prompt_template="Describe {name}.", custom_id_field="sku")
    manifest = submit_round(
        BatchesApi(session_client),
        rows,
        job=as_path(str(tmp_path / "job")),
        round_number=0,
        identity=JobIdentity("anthropic_default"),
        settings=SubmitSettings(),
        defaults=RequestDefaults(model=MODEL, max_tokens=20, system="You write product copy. " * 40),
    )
    # The shared system prompt is stored once beside the chunk: read the lines as they were sent.
    chunk = [json.loads(line) for line in iter_sent_lines(as_path(manifest["batches"][0]["chunk_path"]))]
    assert chunk[3]["custom_id"] == "p3"
    assert chunk[3]["params"]["messages"] == [{"role": "user", "content": "Describe Lamp 3."}]
    assert chunk[3]["params"]["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    estimate = manifest["estimate"]
    assert estimate is not None and estimate["method"] == "count_tokens"
    assert (
        estimate["usage"]["cache_read_input_tokens"] == 11 * estimate["usage"]["cache_creation_input_tokens"]
    )


# Structurally bad params: each is placed in the second chunk (rows 7..), after a first chunk
# that is fine, so a check made only by the API would have created (and paid for) chunk 0.
BAD_PARAMS: dict[str, tuple[dict[str, Any], str]] = {
    "system not a string or blocks": (
        {"system": 5},
        "params.system: Expected `str | array | null`, got `int`",
    ),
    "malformed tools entry": ({"tools": [{"name": "lookup", "input_schema": "x"}]}, "params.tools[0]"),
    "non-boolean stream": ({"stream": "no"}, "params.stream: Expected `bool | null`, got `str`"),
    "content block of an unknown type": (
        {"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]},
        "params.messages[0].content[0].type: Invalid value 'video'",
    ),
    "speed": ({"speed": "fast"}, "params.speed is not accepted in a batch"),
    "unknown parameter": (
        {"temprature": 0.1},
        "params: Object contains unknown field `temprature`; the API refuses fields it does not know "
        "(did you mean 'temperature'?)",
    ),
    "max_tokens above the model's maximum": (
        {"max_tokens": 64_001},
        "params.max_tokens 64,001 is above the 64,000 output tokens claude-haiku-4-5 can produce in a batch",
    ),
}
BAD_INPUTS: dict[str, tuple[list[Any], str]] = {
    "custom_id pattern": ([*requests(3), req("bad id!")], "row 4 (custom_id 'bad id!'): custom_id"),
    "custom_id with a trailing newline": (
        [*requests(3), req("r9\n")],
        "row 4 (custom_id 'r9\\n'): custom_id",
    ),
    "duplicate across batches": (
        [*requests(12), req("r1")],
        "row 13 (custom_id 'r1'): custom_id is already used by row 2",
    ),
    "missing model": ([{"custom_id": "a", "params": {"max_tokens": 5, "messages": []}}], "params.model"),
    "max_tokens 0": ([req("a", max_tokens=0)], "max_tokens must be an integer >= 1"),
    "no messages": ([req("a", messages=[])], "params.messages must be a non-empty list"),
    "stream true": ([req("a", stream=True)], "params.stream must not be true"),
    "one request over the byte limit": ([req("a", "x" * 20_000)], "alone it exceeds the max_bytes_per_batch"),
    "empty input": ([], "the input has no requests"),
    **{
        case: ([*requests(6), req("bad", **params)], f"row 7 (custom_id 'bad'): {rule}")
        for case, (params, rule) in BAD_PARAMS.items()
    },
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_each_bad_input_fails_listing_the_row_and_creates_no_batch(
    case: str, emulator_session: EmulatorProcess, session_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    rows, expected = BAD_INPUTS[case]
    before = emulator_session.batch_count()
    with pytest.raises(InvalidRequestsError, match="nothing was submitted") as raised:
        submit(session_client, rows, tmp_path / "job", max_requests_per_batch=5, max_bytes_per_batch=10_000)
    assert expected in str(raised.value)
    assert emulator_session.batch_count() == before
    assert not layout.ledger_path(as_path(str(tmp_path / "job")), 0).exists()


@pytest.mark.parametrize("case", list(BAD_PARAMS))
def test_the_emulator_refuses_what_submit_refuses_with_the_same_rule(
    case: str, emulator_session: EmulatorProcess, session_client: anthropic.Anthropic
) -> None:
    params, rule = BAD_PARAMS[case]
    if case == "max_tokens above the model's maximum":
        pytest.skip("the model's limits are checked by submit; the API answers them per request")
    before = emulator_session.batch_count()
    with pytest.raises(anthropic.BadRequestError) as raised:
        session_client.messages.batches.create(requests=[req("bad", **params)])  # type: ignore[list-item]
    # The same rule, with indexes written the API's way (requests.0.params.tools.0).
    assert re.sub(r"\[(\d+)\]", r".\1", rule) in str(raised.value)
    assert emulator_session.batch_count() == before


def test_many_invalid_rows_read_as_one_line_per_rule_with_a_count_and_the_fix(
    session_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    rows = [req(f"src/file_{i}.py") for i in range(20)] + [req(f"ok{i}", system=5) for i in range(3)]
    with pytest.raises(InvalidRequestsError) as raised:
        submit(session_client, rows, tmp_path / "job")
    message = str(raised.value)
    assert message.startswith("23 invalid request(s) among 23 row(s)")
    assert "20 rows: row 1 (custom_id 'src/file_0.py')" in message and "and 15 more" in message
    assert "custom_id_from=" in message  # the fix for ids that are file paths
    assert "3 rows: row 21 (custom_id 'ok0')" in message
    assert len(message.splitlines()) <= 6


def test_skip_invalid_submits_the_valid_rows_and_records_the_rest(
    session_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    rows = [*requests(4), req("bad id")]
    manifest = submit(session_client, rows, tmp_path / "job", skip_invalid=True)
    assert manifest["requests"] == 4 and manifest["invalid"] == 1
    assert manifest["invalid_path"] is not None
    failure = read_json(as_path(manifest["invalid_path"]))
    assert failure["result_type"] == "invalid_input" and failure["custom_id"] == "bad id"


def test_a_second_run_with_the_same_input_reattaches_and_creates_no_batch(
    emulator_session: EmulatorProcess, session_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    before = emulator_session.batch_count()
    first = submit(session_client, requests(25), tmp_path / "job", max_requests_per_batch=10)
    second = submit(session_client, requests(25), tmp_path / "job", max_requests_per_batch=10)
    assert emulator_session.batch_count() - before == 3
    assert first["batches"] == second["batches"] and first["fingerprint"] == second["fingerprint"]


def test_budget_refusal_names_estimate_and_budget_and_creates_no_batch(
    emulator_session: EmulatorProcess, session_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    before = emulator_session.batch_count()
    rows = [req(f"r{i}", "x" * 4000, max_tokens=4000) for i in range(50)]
    with pytest.raises(
        BudgetExceededError,
        match=r"round 0 would cost up to \$0\.\d+ .* above the budget max_cost_usd=\$0\.0100",
    ) as refused:
        submit(session_client, rows, tmp_path / "job", max_cost_usd=0.01)
    assert emulator_session.batch_count() == before
    # The numbers travel with the error and into the round's refusal record, for the page.
    error = refused.value
    assert (error.budget_usd, error.spent_usd) == (0.01, 0.0)
    assert error.estimate_usd > 0.01 and f"${error.estimate_usd:.4f}" in str(error)
    assert json.loads((tmp_path / "job" / "round-0" / "refusal.json").read_text()) == {
        "round": 0,
        "reason": str(error),
        "estimate_usd": error.estimate_usd,
        "budget_usd": 0.01,
        "spent_usd": 0.0,
        "basis": "upper_bound",
        "kind": "BudgetExceededError",
    }
    # A refused round binds nothing: the same job can be run with a smaller input.
    manifest = submit(session_client, rows[:1], tmp_path / "job", max_cost_usd=0.05)
    assert len(manifest["batches"]) == 1


def test_changed_input_fails_by_default_and_resubmit_cancels_the_old_batches(
    emulator: EmulatorProcess, sync_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    emulator.configure(throughput=0)
    job = tmp_path / "job"
    first = submit(sync_client, requests(6), job, max_requests_per_batch=3)
    with pytest.raises(InputChangedError, match="fingerprint") as raised:
        submit(sync_client, requests(7), job, max_requests_per_batch=3)
    assert str(job) in str(raised.value)
    assert emulator.batch_count() == 2
    assert [json.loads(line)["custom_id"] for line in (job / "round-0/chunks/chunk-00001.jsonl").open()] == [
        "r3",
        "r4",
        "r5",
    ]  # the chunk files of the recorded batches were not overwritten

    second = submit(sync_client, requests(7), job, max_requests_per_batch=3, on_input_change="resubmit")
    assert emulator.batch_count() == 5 and len(second["batches"]) == 3
    for record in first["batches"]:
        status = sync_client.messages.batches.retrieve(record["batch_id"]).processing_status
        assert status in ("canceling", "ended")
    assert list((job / "round-0").glob("ledger.*.json"))


def test_transient_429_and_529_on_create_are_retried_without_duplicate_batches(
    emulator: EmulatorProcess, tmp_path: Path
) -> None:
    # At most 4 faults in all, so no create can fail 1 + 4 times: every chunk gets through.
    emulator.configure(
        http_fault_rate=0.6,
        http_fault_statuses=[429, 529],
        http_fault_budget=4,
        retry_after_seconds=0.05,
        seed=3,
    )
    with anthropic.Anthropic(base_url=emulator.base_url, api_key="test-key", max_retries=4) as client:
        manifest = submit(client, requests(9), tmp_path / "job", max_requests_per_batch=3)
    assert emulator.configure()["http_fault_budget"] < 4  # faults were served on the creates
    assert emulator.batch_count() == 3
    assert len({b["batch_id"] for b in manifest["batches"]}) == 3


def crashing_submit(base_url: str, source: str, job: str, moment: str) -> None:
    """Submit in a forked worker that SIGKILLs itself mid-submission (run as the child's target)."""
    from airflow_batch.submit.ledger import LedgerStore

    created: list[str] = []
    create, save = BatchesApi.create, LedgerStore.save

    def create_then_maybe_die(self: BatchesApi, *args: Any, **kwargs: Any) -> Any:
        batch = create(self, *args, **kwargs)
        created.append(batch.id)
        if moment == "before_record" and len(created) == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # the API made the batch; the ledger never hears of it
        return batch

    def save_then_maybe_die(self: LedgerStore, ledger: Any) -> None:
        save(self, ledger)
        if moment == "after_record" and len(ledger.batches) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    BatchesApi.create = create_then_maybe_die  # type: ignore[method-assign]
    LedgerStore.save = save_then_maybe_die  # type: ignore[method-assign]
    with anthropic.Anthropic(base_url=base_url, api_key="test-key") as client:
        submit(client, iter_jsonl_lines(as_path(source)), Path(job), max_requests_per_batch=4)


@pytest.mark.parametrize("moment", ["after_record", "before_record"])
def test_sigkill_mid_submission_then_rerun_ends_with_exactly_one_batch_per_chunk(
    moment: str, emulator: EmulatorProcess, sync_client: anthropic.Anthropic, tmp_path: Path
) -> None:
    source = tmp_path / "requests.jsonl"
    source.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in requests(20)))
    job = tmp_path / "job"
    # A forked worker: a real process, killed for real, without paying Airflow's import time again.
    worker = multiprocessing.get_context("fork").Process(
        target=crashing_submit, args=(emulator.base_url, str(source), str(job), moment)
    )
    worker.start()
    worker.join(timeout=120)
    assert worker.exitcode == -signal.SIGKILL
    killed_after = emulator.batch_count()
    assert killed_after == (2 if moment == "after_record" else 3)

    manifest = submit(sync_client, iter_jsonl_lines(as_path(str(source))), job, max_requests_per_batch=4)

    assert emulator.batch_count() == 5
    ids = [b["batch_id"] for b in manifest["batches"]]
    assert len(ids) == 5 and len(set(ids)) == 5
    listed = {batch.id for batch in sync_client.messages.batches.list(limit=100)}
    assert listed == set(ids)
    ledger = read_json(layout.ledger_path(as_path(str(job)), 0))
    assert ledger["intents"] == {}
    if moment == "before_record":
        assert ledger["batches"]["2"].get("adopted") is True


@pytest.mark.parametrize("others", [0, 1], ids=["adopted", "ambiguous-not-adopted"])
def test_a_create_whose_response_is_lost_adopts_its_batch_only_when_unambiguous(
    others: int,
    emulator: EmulatorProcess,
    sync_client: anthropic.Anthropic,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from airflow_batch.submit import chunk_batch as submit_module

    monkeypatch.setattr(submit_module, "LOST_RESPONSE_SETTLE_SECONDS", 0.0)
    for _ in range(others):  # another job's batch of the same size, created in the matching window
        sync_client.messages.batches.create(requests=requests(3))  # type: ignore[arg-type]
    # The emulator stores the first create's batch, then cuts the connection before answering.
    emulator.configure(http_fault_rate=1.0, http_fault_statuses=["lost"], http_fault_budget=1)
    with caplog.at_level("WARNING", logger="airflow_batch.submit.round"):
        manifest = submit(sync_client, requests(3), tmp_path / "job")

    assert emulator.configure()["http_fault_budget"] == 0, "the create's response was not lost"
    recorded = manifest["batches"][0]["batch_id"]
    listed = [batch.id for batch in sync_client.messages.batches.list(limit=10)]
    if others == 0:
        assert emulator.batch_count() == 1 and listed == [recorded]  # found and adopted, not created twice
        assert "adopted batch " + recorded + " whose create response was lost" in caplog.text
    else:
        assert emulator.batch_count() == 3  # cannot tell which: a new batch, and a warning naming both
        assert "adopting none and submitting again" in caplog.text
        assert all(batch_id in caplog.text for batch_id in listed if batch_id != recorded)
