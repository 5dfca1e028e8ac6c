"""Pure functions of the submit path: request checks, records, chunk planning, estimate, ledger."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from airflow_batch import layout
from airflow_batch.exceptions import BudgetExceededError, UnknownModelError
from airflow_batch.rules.costs import price_table
from airflow_batch.rules.tokens import approx_tokens, input_tokens
from airflow_batch.storage import as_path, iter_jsonl
from airflow_batch.submit.chunk_files import ChunkBody, body_bytes
from airflow_batch.submit.chunking import prepare_chunks
from airflow_batch.submit.estimate import TokenTally, estimate_cost
from airflow_batch.submit.ledger import Ledger, LedgerStore
from airflow_batch.submit.records import RequestDefaults, records_to_requests
from airflow_batch.submit.round import SubmitSettings
from airflow_batch.submit.validation import InvalidRow, Problem, ProblemReport, check_request

MODEL = "claude-haiku-4-5"


def req(cid: str = "r1", **params: Any) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    body.update(params)
    return {"custom_id": cid, "params": body}


def requests(n: int, text: str = "hello") -> list[dict[str, Any]]:
    return [req(f"r{i}", messages=[{"role": "user", "content": f"{text} {i}"}]) for i in range(n)]


def prepare(tmp_path: Path, rows: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("max_requests", 100_000)
    kwargs.setdefault("max_bytes", 255_000_000)
    return prepare_chunks(rows, staging=as_path(str(tmp_path / "staging")), **kwargs)


# --- request checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "rule"),
    [
        (req("a b"), "custom_id 'a b' must match"),
        (req("x" * 65), "must match"),
        (req("a\n"), "custom_id 'a\\n' must match"),  # a trailing newline is not a full match
        ({"params": req()["params"]}, "custom_id is missing"),
        ({**req(), "extra": 1}, "unknown field 'extra'"),
        ({"custom_id": "a", "params": "nope"}, "params must be an object"),
        (req(model=""), "params.model is missing"),
        ({"custom_id": "a", "params": {"max_tokens": 5, "messages": []}}, "params.model is missing"),
        (req(max_tokens=0), "max_tokens must be an integer >= 1"),
        (req(max_tokens=True), "params.max_tokens: Expected `int`, got `bool`"),
        (req(messages=[]), "params.messages must be a non-empty list"),
        (
            req(messages=[{"role": "tool", "content": "x"}]),
            "params.messages[0].role: Invalid enum value 'tool'",
        ),
        (req(messages=[{"role": "user", "content": ""}]), "content must be a non-empty"),
        (req(stream=True), "params.stream must not be true"),
        (req(stream="yes"), "params.stream: Expected `bool | null`, got `str`"),
        (req(speed="fast"), "params.speed is not accepted in a batch"),
        (req(system=5), "params.system: Expected `str | array | null`, got `int`"),
        (req(temperatur=0.5), "params: Object contains unknown field `temperatur`"),
        (
            req(messages=[{"role": "user", "content": [{"type": "txt", "text": "x"}]}]),
            "params.messages[0].content[0].type: Invalid value 'txt' (content block types:",
        ),
        (req(tools=[{"name": "lookup"}]), "params.tools[0]: tool 'lookup': input_schema must be"),
        (req(tools=[{"type": "web_search_20250305", "name": "search"}]), "must be named 'web_search'"),
        (req(tools=[{"type": "magic_2099"}]), "type 'magic_2099' is not a tool type the API knows"),
        (req(tool_choice={"type": "tool", "name": "x"}), "params.tool_choice names the tool 'x'"),
        (req(thinking={"type": "enabled", "budget_tokens": 100}), "budget_tokens must be >= 1,024"),
        (
            req(max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 4000}),
            "must be below max_tokens",
        ),
        (req(thinking={"type": "sometimes"}), "params.thinking.type: Invalid value 'sometimes'"),
        (req(output_config={"effort": "extreme"}), "params.output_config.effort: Invalid enum value"),
        (
            req(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]),
            "params.messages[0].content[0].source.media_type is missing",
        ),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_check_request_names_the_rule_each_invalid_request_breaks(request_: Any, rule: str) -> None:
    problem = check_request(request_)
    assert problem is not None and rule in problem


def test_check_request_accepts_what_the_api_accepts_in_a_batch() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    document = {"type": "document", "source": {"type": "file", "file_id": "file_1"}, "title": "Q3"}
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}
    blocks = [
        {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        image,
        document,
        pdf,
    ]
    tool = {"name": "lookup", "description": "Find a product", "input_schema": {"type": "object"}}
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    ok = req(
        messages=[
            {"role": "user", "content": blocks},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}]},
            {"role": "user", "content": "go on"},
        ],
        system=[{"type": "text", "text": "Be brief."}],
        stream=False,
        max_tokens=4000,
        tools=[tool, search],
        tool_choice={"type": "tool", "name": "lookup"},
        thinking={"type": "enabled", "budget_tokens": 2048},
        output_config={"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}},
        metadata={"user_id": "u1"},
        service_tier="auto",
        inference_geo="us",
        temperature=0.2,
    )
    assert check_request(ok) is None
    # Adaptive thinking came with the 4.6 models (data/model_rules.json).
    adaptive = req(model="claude-sonnet-4-6", thinking={"type": "adaptive", "display": "omitted"})
    assert check_request(adaptive) is None


def test_a_job_with_betas_lets_unknown_parameters_and_tool_types_pass() -> None:
    beta = req(context_hints={"x": 1}, tools=[{"type": "magic_2099", "name": "magic"}])
    assert check_request(beta) is not None
    assert check_request(beta, lenient=True) is None


def test_max_tokens_above_the_models_batch_maximum_is_refused() -> None:
    limit = {MODEL: 64_000}.get
    assert check_request(req(max_tokens=64_000), max_output_tokens=limit) is None
    rule = check_request(req(max_tokens=64_001), max_output_tokens=limit)
    assert rule is not None and "above the 64,000 output tokens claude-haiku-4-5 can produce" in rule


def test_problem_report_groups_rules_with_a_count_the_first_rows_and_the_fix() -> None:
    report = ProblemReport()
    for row in range(1, 26):
        report.add(
            Problem(row, f"src/f{row}.py", f"custom_id 'src/f{row}.py' must match ^x$", "use ids", "line")
        )
    report.add(
        Problem(30, "r30", "record has no field 'txt' used by prompt_template", "fields: text", "line")
    )
    text = report.message(rows=40)

    assert text.startswith("26 invalid request(s) among 40 row(s)")
    assert text.count("custom_id 'src/") == 6  # the rule once, then five example rows
    assert "25 rows: line 1 (custom_id 'src/f1.py'), line 2" in text and "and 20 more" in text
    assert "fix: use ids" in text and "fix: fields: text" in text
    assert "  - line 30 (custom_id 'r30'): record has no field 'txt'" in text


def test_defaults_fill_only_missing_fields_and_mark_the_shared_system_prompt_cached() -> None:
    defaults = RequestDefaults(model=MODEL, max_tokens=32, system="Be brief.")
    bare = {"custom_id": "a", "params": {"messages": [{"role": "user", "content": "x"}]}}
    filled = defaults.apply(bare)["params"]
    assert filled["model"] == MODEL and filled["max_tokens"] == 32
    # One hour by default: a batch can take longer than the 5-minute default lifetime.
    assert filled["system"] == [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    short = RequestDefaults(model=MODEL, max_tokens=32, system="Be brief.", cache_ttl="5m")
    assert short.apply(bare)["params"]["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
    own = defaults.apply(req(max_tokens=5, system="mine"))["params"]
    assert own["max_tokens"] == 5 and own["system"] == "mine"
    plain = RequestDefaults(system="Be brief.", cache_system_prompt=False).apply(bare)["params"]
    assert plain["system"] == "Be brief."


# --- records --------------------------------------------------------------------------------


def test_records_become_requests_through_the_prompt_template() -> None:
    records = [{"id": "p-1", "name": "Lamp", "colour": "red"}, {"id": 7, "name": "Mug", "colour": "blue"}]
    out = list(
        records_to_requests(records, prompt_template="Describe {name} ({colour})", custom_id_field="id")
    )
    assert out[0] == {
        "custom_id": "p-1",
        "params": {"messages": [{"role": "user", "content": "Describe Lamp (red)"}]},
    }
    assert out[1]["custom_id"] == "7"


def test_records_with_missing_fields_or_invalid_ids_become_invalid_rows_never_rewritten() -> None:
    records = [{"id": "a b", "text": "x"}, {"id": "ok"}, {"text": "no id"}, "not a record"]
    out = list(records_to_requests(records, prompt_template="{text}", custom_id_field="id"))
    assert all(isinstance(row, InvalidRow) for row in out)
    assert "custom_id 'a b' must match" in out[0].rule and out[0].custom_id == "a b"
    assert "no field 'text'" in out[1].rule and out[1].custom_id == "ok"
    assert "no field 'id'" in out[2].rule
    assert "must be a JSON object" in out[3].rule


def test_a_records_file_line_that_is_not_json_is_an_invalid_row_with_its_index(tmp_path: Path) -> None:
    from airflow_batch.operators.submit import SubmitBatchesOperator

    source = tmp_path / "records.jsonl"
    source.write_text('{"custom_id": "a", "t": "x"}\n{oops\n{"custom_id": "b", "t": "y"}\n')
    operator = SubmitBatchesOperator(
        task_id="s", output_path=str(tmp_path), records=str(source), prompt_template="{t}", model=MODEL
    )
    prepared = prepare(tmp_path, operator.input_rows(), defaults=RequestDefaults(model=MODEL, max_tokens=5))
    [problem] = prepared.report.first()
    assert prepared.fatal and problem.row == 2  # the second line of the file
    assert "not valid JSON" in problem.rule


def test_request_builder_returns_params_merged_over_the_template() -> None:
    out = list(
        records_to_requests(
            [{"custom_id": "a", "t": "x"}],
            prompt_template="Q: {t}",
            request_builder=lambda record: {"temperature": 0.0, "max_tokens": 9},
        )
    )
    params = out[0]["params"]  # type: ignore[index]
    assert params["temperature"] == 0.0 and params["max_tokens"] == 9
    assert params["messages"][0]["content"] == "Q: x"


# --- chunk planning -------------------------------------------------------------------------


def test_chunks_split_by_count_deterministically(tmp_path: Path) -> None:
    rows = requests(25)
    first = prepare(tmp_path / "a", rows, max_requests=10)
    second = prepare(tmp_path / "b", rows, max_requests=10)
    assert [c.requests for c in first.chunks] == [10, 10, 5]
    assert first.fingerprint == second.fingerprint and first.chunks == second.chunks
    ids = [r["custom_id"] for r in iter_jsonl(first.staging / "chunk-00002.jsonl")]
    assert ids == [f"r{i}" for i in range(20, 25)]


def test_chunks_split_by_bytes_and_the_body_sent_is_exactly_the_bytes_counted(tmp_path: Path) -> None:
    rows = [req(f"r{i:03d}", messages=[{"role": "user", "content": "x" * 200}]) for i in range(40)]
    line = len(msgspec.json.encode(rows[0]))  # every line has this size
    limit = body_bytes(7, 7 * line) + 3  # room for 7 lines of this size, not 8
    prepared = prepare(tmp_path, rows, max_bytes=limit)
    assert all(c.bytes <= limit for c in prepared.chunks)
    assert [c.requests for c in prepared.chunks][:3] == [7, 7, 7]
    assert sum(c.requests for c in prepared.chunks) == 40
    for chunk in prepared.chunks:
        body = b"".join(ChunkBody(prepared.staging / f"chunk-{chunk.index:05d}.jsonl", chunk.bytes))
        assert len(body) == chunk.bytes
        assert [r["custom_id"] for r in json.loads(body)["requests"]] == [
            r["custom_id"] for r in iter_jsonl(prepared.staging / f"chunk-{chunk.index:05d}.jsonl")
        ]


def test_chunk_body_streams_in_blocks_that_split_lines(tmp_path: Path) -> None:
    prepared = prepare(tmp_path, requests(50))
    body = ChunkBody(prepared.staging / "chunk-00000.jsonl", prepared.chunks[0].bytes)
    body.block_size = 7  # force separators to fall on block edges
    data = b"".join(body)
    assert len(data) == prepared.chunks[0].bytes and len(json.loads(data)["requests"]) == 50
    assert b"".join(body) == data  # iterable again, as an SDK retry needs


def test_json_lines_and_dicts_of_the_same_requests_have_the_same_fingerprint(tmp_path: Path) -> None:
    rows = requests(30)
    lines = [msgspec.json.encode(r) for r in rows]
    assert prepare(tmp_path / "a", rows).fingerprint == prepare(tmp_path / "b", lines).fingerprint
    assert prepare(tmp_path / "c", rows[:-1]).fingerprint != prepare(tmp_path / "d", rows).fingerprint
    assert (
        prepare(tmp_path / "e", rows, max_requests=10).fingerprint
        != prepare(tmp_path / "f", rows).fingerprint
    )


def test_duplicate_custom_ids_are_found_across_chunks_with_both_rows_named(tmp_path: Path) -> None:
    rows = requests(30)
    rows[27] = req("r3")
    prepared = prepare(tmp_path, rows, max_requests=10)
    assert prepared.fatal and prepared.chunks == []
    assert [str(p) for p in prepared.report.first()] == [
        "row 28 (custom_id 'r3'): custom_id is already used by row 4; "
        "custom_id must be unique across the whole job"
    ]


def test_invalid_json_lines_and_oversized_requests_are_problems_with_their_row(tmp_path: Path) -> None:
    rows: list[Any] = [msgspec.json.encode(r) for r in requests(3)]
    rows.insert(1, b"{not json")
    rows.append(req("big", messages=[{"role": "user", "content": "x" * 5000}]))
    prepared = prepare(tmp_path, rows, max_bytes=2000)
    assert prepared.fatal and prepared.invalid == 2
    first, second = prepared.report.first()
    assert first.row == 2 and "not valid JSON" in first.rule
    assert second.row == 5 and "alone it exceeds the max_bytes_per_batch" in second.rule


def test_empty_input_is_a_problem(tmp_path: Path) -> None:
    prepared = prepare(tmp_path, [])
    assert prepared.fatal and "no requests" in prepared.report.first()[0].rule


def test_skip_invalid_writes_invalid_input_failures_and_chunks_the_rest(tmp_path: Path) -> None:
    rows = requests(5)
    rows[2] = req("bad id")
    prepared = prepare(tmp_path, rows, skip_invalid=True)
    assert not prepared.fatal and prepared.requests == 4 and prepared.invalid == 1
    assert prepared.invalid_file is not None
    failure = json.loads(prepared.invalid_file.read_text())
    assert failure["result_type"] == "invalid_input" and failure["custom_id"] == "bad id"
    assert failure["row"] == 3 and failure["retryable"] is False


def test_skip_invalid_never_skips_a_duplicate_custom_id(tmp_path: Path) -> None:
    rows = [*requests(3), req("r0")]
    assert prepare(tmp_path, rows, skip_invalid=True).fatal


# --- estimate -------------------------------------------------------------------------------


def test_local_approximation_counts_a_quarter_token_per_character_per_text() -> None:
    params = {
        "system": "abcd" * 10,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "abcde"}]}],
    }
    assert approx_tokens("abcde") == 2 and input_tokens(params) == 10 + 2


def test_cached_system_prompt_is_written_once_then_read_and_priced_at_batch_rates() -> None:
    defaults = RequestDefaults(model=MODEL, max_tokens=100, system="S" * 4000)
    tally = TokenTally()
    for row in requests(10):
        tally.add(
            defaults.apply(
                {"custom_id": row["custom_id"], "params": {"messages": row["params"]["messages"]}}
            )["params"]
        )
    estimate = estimate_cost(tally, price_table())
    usage = estimate["usage"]
    assert usage["cache_creation_input_tokens"] == 1000 and usage["cache_read_input_tokens"] == 9 * 1000
    assert usage["cache_creation_1h_input_tokens"] == 1000  # the default lifetime is 1 hour
    assert usage["output_tokens"] == 1000 and estimate["method"] == "approximation"
    price = price_table().price_for(MODEL)
    assert price is not None
    standard = (
        usage["input_tokens"] * price.input
        + 1000 * price.cache_write_1h
        + 9000 * price.cache_read
        + 1000 * price.output
    ) / 1e6
    assert estimate["standard_usd"] == pytest.approx(standard, abs=1e-6)
    assert estimate["batch_usd"] == pytest.approx(standard / 2, abs=1e-6)


@pytest.mark.parametrize(("cache_ttl", "stated"), [("1h", "1h"), ("5m", "5m"), (None, None)])
def test_the_estimate_states_the_cache_ttl_it_priced_in_its_figures_and_log_line(
    cache_ttl: str | None, stated: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    defaults = RequestDefaults(
        model=MODEL,
        max_tokens=100,
        system="S" * 4000,
        cache_system_prompt=cache_ttl is not None,
        cache_ttl=cache_ttl or "1h",
    )
    tally = TokenTally()
    for row in requests(3):
        params = {"messages": row["params"]["messages"]}
        tally.add(defaults.apply({"custom_id": row["custom_id"], "params": params})["params"])
    with caplog.at_level("INFO"):
        estimate = estimate_cost(tally, price_table())
    assert estimate["cache_ttl"] == stated
    written = f"cache write 1000 (priced at the {stated} cache TTL)" if stated else "cache write 0 (no prompt"
    assert written in caplog.text


def test_the_estimate_has_an_upper_bound_and_an_expected_figure_from_expected_output_tokens() -> None:
    tally = TokenTally(expected_output_tokens=3, expected_basis="observed in the last 2 run(s) of this task")
    for row in requests(4):
        tally.add(row["params"])
    estimate = estimate_cost(tally, price_table())
    assert estimate["usage"]["output_tokens"] == 4 * 16  # every request's max_tokens
    assert estimate["expected_usage"] is not None and estimate["expected_usage"]["output_tokens"] == 12
    assert estimate["expected_output_tokens"] == 3
    assert estimate["expected_basis"] == "observed in the last 2 run(s) of this task"
    assert (
        estimate["expected_batch_usd"] is not None and estimate["expected_batch_usd"] < estimate["batch_usd"]
    )
    # An expected length above a request's max_tokens is capped by it.
    capped = TokenTally(expected_output_tokens=1_000)
    for row in requests(4):
        capped.add(row["params"])
    figures = estimate_cost(capped, price_table())
    assert figures["expected_batch_usd"] == pytest.approx(figures["batch_usd"])
    assert estimate_cost(TokenTally(), price_table())["expected_batch_usd"] is None


def test_the_budget_guards_the_upper_bound_unless_told_to_guard_the_expected_cost() -> None:
    assert SubmitSettings().guarded_basis == "upper_bound"
    assert SubmitSettings(expected_output_tokens=5).guarded_basis == "expected"  # as given by the user
    observed = SubmitSettings(expected_output_tokens=5, expected_basis="observed in ...")
    assert observed.guarded_basis == "upper_bound"  # an observed length changes nothing silently
    assert replace(observed, budget_basis="expected").guarded_basis == "expected"
    with pytest.raises(ValueError, match="budget_basis must be"):
        SubmitSettings(budget_basis="median")


def test_an_unknown_model_is_reported_unpriced_never_guessed() -> None:
    tally = TokenTally()
    tally.add(req(model="my-finetune")["params"])
    unpriced = estimate_cost(tally, price_table())
    assert unpriced["priced"] is False and unpriced["unpriced_models"] == ["my-finetune"]
    priced = estimate_cost(tally, price_table({"my-finetune": {"input": 1, "output": 2}}))
    assert priced["priced"] is True and priced["batch_usd"] > 0


# --- ledger ---------------------------------------------------------------------------------


class DictStateStore:
    """The get/set/delete surface of Airflow's task_state_store accessor, in a dict."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self.data[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def test_ledger_is_rebuilt_from_the_state_store_when_the_job_folder_lost_it(tmp_path: Path) -> None:
    job = as_path(str(tmp_path / "job"))
    state = DictStateStore()
    store = LedgerStore(job, 0, state)
    ledger = Ledger(job_dir=str(job), round=0, fingerprint="f1", conn_id="c")
    ledger.batches[0] = {"batch_id": "msgbatch_a"}
    ledger.intents[1] = {"started_at": "2026-01-01T00:00:00+00:00"}
    store.save(ledger)
    layout.ledger_path(job, 0).unlink()
    loaded = LedgerStore(job, 0, state).load()
    assert loaded is not None and loaded.fingerprint == "f1"
    assert loaded.batch_id(0) == "msgbatch_a" and 1 in loaded.intents
    assert LedgerStore(job, 0, None).load() is None


def test_batches_the_queue_trigger_created_reach_the_mirror_through_its_event(tmp_path: Path) -> None:
    # The trigger writes the ledger file but has no state store; a resume on a host that cannot
    # read a local ledger file must still know its batches.
    job = as_path(str(tmp_path / "job"))
    state = DictStateStore()
    ledger = Ledger(job_dir=str(job), round=0, fingerprint="f1", conn_id="c")
    ledger.batches[0] = {"batch_id": "msgbatch_a"}
    ledger.intents[1] = {"started_at": "2026-01-01T00:00:00+00:00"}
    LedgerStore(job, 0, state).save(ledger)
    LedgerStore(job, 0, state).mirror_batches({"1": "msgbatch_b", "2": "msgbatch_c"})
    layout.ledger_path(job, 0).unlink()
    loaded = LedgerStore(job, 0, state).load()
    assert loaded is not None and loaded.intents == {}
    assert [loaded.batch_id(chunk) for chunk in (0, 1, 2)] == ["msgbatch_a", "msgbatch_b", "msgbatch_c"]


def test_a_refusal_records_its_round_reason_and_with_a_budget_its_figures() -> None:
    budget = BudgetExceededError(
        "round 1 would cost $0.0200", estimate_usd=0.02, budget_usd=0.03, spent_usd=0.015
    )
    model = UnknownModelError("the API does not serve the model(s) 'claude-x'")

    assert budget.record(1) == {
        "round": 1,
        "reason": "round 1 would cost $0.0200",
        "estimate_usd": 0.02,
        "budget_usd": 0.03,
        "spent_usd": 0.015,
        "basis": "upper_bound",
        "kind": "BudgetExceededError",
    }
    assert model.record(0) == {
        "round": 0,
        "reason": "the API does not serve the model(s) 'claude-x'",
        "kind": "UnknownModelError",
    }
    copy = pickle.loads(pickle.dumps(budget))
    assert (type(copy), str(copy), copy.record(1)) == (BudgetExceededError, str(budget), budget.record(1))
