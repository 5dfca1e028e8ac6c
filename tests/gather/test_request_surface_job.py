"""The 2026 request surface through a whole job (dag.test, emulator): thinking, a forced tool,
web search that pauses, refusals and the context window, each landing as its row or failure kind.

The SDK's own parsing of each block type is pinned in ``tests/emulator/test_emulator_answers.py``;
this file follows the same answers through submit, gather, a retry round and finalize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag
from literal_prices import billed_rows, rows_cost, usage_by_model, without_zeros

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.storage import as_path

CONTEXT_WINDOW = 200_000  # Haiku 4.5
SEARCH = {"type": "web_search_20250305", "name": "web_search"}
RATE_TOOL = {
    "name": "record_rating",
    "description": "Record the review's rating",
    "input_schema": {
        "type": "object",
        "properties": {
            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
            "label": {"enum": ["good", "bad"]},
        },
        "required": ["stars", "label"],
    },
}
N_SEARCH = 16
N_TOOL = 6
N_PLAIN = 12


def _request(custom_id: str, content: str, **params: Any) -> dict[str, Any]:
    params.setdefault("model", "claude-haiku-4-5")
    params.setdefault("max_tokens", 300)
    return {"custom_id": custom_id, "params": {"messages": [{"role": "user", "content": content}], **params}}


def surface_requests() -> list[dict[str, Any]]:
    """Every kind of request the job sends, by custom_id prefix."""
    thinking = [
        _request(
            "think-enabled",
            "Plan a week of meals",
            max_tokens=2_000,
            thinking={"type": "enabled", "budget_tokens": 1_024},
        ),
        _request(
            "think-adaptive",
            "Compare two offers",
            model="claude-sonnet-4-6",
            thinking={"type": "adaptive"},
            output_config={"effort": "low"},
        ),
        _request(
            "think-effort-max",
            "Prove the claim",
            model="claude-opus-4-8",
            max_tokens=1_000,
            thinking={"type": "adaptive", "display": "summarized"},
            output_config={"effort": "max"},
        ),
    ]
    tools = [
        _request(
            f"tool-{i}",
            f"Rate review {i}: works well",
            tools=[RATE_TOOL],
            tool_choice={"type": "tool", "name": "record_rating"},
        )
        for i in range(N_TOOL)
    ]
    search = [
        _request(f"search-{i}", f"Find this week's news on topic {i}", tools=[SEARCH])
        for i in range(N_SEARCH)
    ]
    plain = [_request(f"plain-{i}", f"Say something about item {i}") for i in range(N_PLAIN)]
    # The prompt fits the window; the prompt and its answer do not: the answer stops at its end.
    edge = _request("window-edge", "y" * (4 * (CONTEXT_WINDOW - 40)), max_tokens=300)
    return [*thinking, *tools, *search, *plain, edge]


def _rows(path: Any) -> list[dict[str, Any]]:
    path = as_path(str(path))
    return (
        [msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
        if path.exists()
        else []
    )


def _round_rows(job: Any, number: int, kind: str) -> list[dict[str, Any]]:
    folder = layout.round_dir(job, number) / kind
    return [row for part in sorted(folder.glob("*.jsonl")) for row in _rows(part)] if folder.exists() else []


@pytest.mark.usefixtures("airflow_db")
def test_each_block_type_lands_as_its_row_and_each_stop_as_its_failure_kind(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    # Seed 5 refuses a fifth of the answers without hitting the one window-edge request, and
    # pauses about half the web searches of round 0.
    emulator.configure(pause_turn_rate=0.5, refusal_rate=0.2, seed=5)
    requests_path = tmp_path / "requests.jsonl"
    requests_path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in surface_requests()))
    output = str(tmp_path / "out")
    with DAG("request_surface", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "surface",
            requests=str(requests_path),
            output_path=output,
            conn_id=anthropic_conn,
            include_content=True,
            max_retry_rounds=1,
            poll_interval=0.5,
            max_failure_rate=1.0,  # a fifth refused on purpose: above the default 5%
            submit_kwargs={"count_tokens_sample": 0},
            keep_chunks=True,  # the test reads what each round sent
        )
    run = run_dag(dag)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]

    job = layout.job_dir(output, dag.dag_id, run.run_id, "surface.submit")
    results = {row["custom_id"]: row for row in _rows(layout.final_results_path(job))}
    failures = {row["custom_id"]: row for row in _rows(layout.final_failures_path(job))}
    assert len(results) + len(failures) == len(surface_requests())

    # Thinking: its own block in content, counted in usage, never in text.
    thinking_rows = [row for cid, row in results.items() if cid.startswith("think-")]
    for row in thinking_rows:
        blocks = row["content"]
        assert blocks[0]["type"] == "thinking" and blocks[0]["signature"]
        assert blocks[0]["thinking"] and blocks[0]["thinking"] not in row["text"]
        assert "Emulated thinking" not in row["text"] and row["text"].startswith("Emulated response")
        assert 0 < row["usage"]["thinking_tokens"] < row["usage"]["output_tokens"]
    budgets = {row["custom_id"]: row["usage"]["thinking_tokens"] for row in thinking_rows}
    # Thinking tokens by effort (high, the default, is 192; low 32; max 512), within budget_tokens.
    assert budgets == {"think-enabled": 192, "think-adaptive": 32, "think-effort-max": 512}

    # A forced tool: a tool_use result with the tool's name and an input of its schema.
    tool_rows = [row for cid, row in results.items() if cid.startswith("tool-")]
    assert tool_rows, "every tool request was refused: no row to check"
    for row in tool_rows:
        assert row["stop_reason"] == "tool_use" and row["text"] == ""
        (call,) = row["tool_calls"]
        assert call["name"] == "record_rating" and call["id"].startswith("toolu_")
        jsonschema.validate(call["input"], RATE_TOOL["input_schema"])

    # Web search: round 0 paused some turns; round 1 resent each with its partial assistant
    # content appended and the continued turn ended with the search result and the text.
    paused = {
        row["custom_id"]: row for row in _round_rows(job, 0, "failures") if row["result_type"] == "paused"
    }
    assert paused and all(cid.startswith("search-") and row["retryable"] for cid, row in paused.items())
    assert all("pause_turn" in row["message"] for row in paused.values())
    resent = {
        row["custom_id"]: row
        for part in sorted((layout.chunks_dir(job, 1)).glob("*.jsonl"))
        for row in _rows(part)
    }
    for custom_id, failure in paused.items():
        messages = resent[custom_id]["params"]["messages"]
        assert messages[-1] == {"role": "assistant", "content": failure["content"]}
        assert [block["type"] for block in failure["content"]] == ["server_tool_use"]
    continued = [results[cid] for cid in paused if cid in results]
    assert continued, "no paused turn was continued to success"
    for row in continued:
        assert row["round"] == 1 and row["stop_reason"] == "end_turn"
        assert row["usage"]["web_search_requests"] == 1
        assert [block["type"] for block in row["content"]] == ["web_search_tool_result", "text"]
    searched = [row for cid, row in results.items() if cid.startswith("search-") and cid not in paused]
    assert searched and all(row["usage"]["web_search_requests"] == 1 for row in searched)
    assert not any(row["result_type"] == "paused" for row in failures.values())

    # Refusals: a failure of their own, not retryable, never resubmitted.
    refused = {row["custom_id"] for row in _round_rows(job, 0, "failures") if row["result_type"] == "refused"}
    assert refused
    assert refused.isdisjoint(resent)
    for custom_id in refused:
        failure = failures[custom_id]
        assert failure["round"] == 0 and failure["retryable"] is False
        assert "refusal" in failure["message"] and failure["stop_reason"] == "refusal"

    # The context window: a failure with the reason and the fix, not retried.
    edge = failures["window-edge"]
    assert (edge["result_type"], edge["retryable"], edge["round"]) == ("context_window_exceeded", False, 0)
    assert "context window" in edge["message"] and "shorten the input or lower max_tokens" in edge["message"]
    assert edge["usage"]["input_tokens"] + edge["usage"]["output_tokens"] == CONTEXT_WINDOW
    assert "window-edge" not in resent

    # The manifest counts the kinds and prices the searches on top of the tokens.
    manifest = msgspec.json.decode(as_path(str(layout.final_manifest_path(job))).read_bytes())
    final_refused = [row for row in failures.values() if row["result_type"] == "refused"]
    assert manifest["failures_by_type"]["refused"] == len(final_refused) >= len(refused)
    assert manifest["failures_by_type"]["context_window_exceeded"] == 1
    searches = sum(row["usage"].get("web_search_requests", 0) for row in results.values())
    assert manifest["usage"]["web_search_requests"] >= searches > 0
    assert manifest["usage"]["thinking_tokens"] >= sum(
        row["usage"]["thinking_tokens"] for row in thinking_rows
    )
    # Its cost is that of every billed row of both rounds at the pricing page's prices, and those
    # rows' usage is what the emulator billed, model by model.
    billed = billed_rows(job, range(len(manifest["rounds"])))
    assert usage_by_model(billed) == without_zeros(emulator.billing()["usage_by_model"])
    standard, batch = rows_cost(billed)
    assert manifest["cost"]["priced"] is True
    assert manifest["cost"]["standard_usd"] == pytest.approx(standard, abs=2e-6)
    assert manifest["cost"]["batch_usd"] == pytest.approx(batch, abs=2e-6)
