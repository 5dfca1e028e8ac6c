"""The facets of a gathered round with reused answers, built from a manifest and its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_batch.lineage.facets import gathered_lineage
from airflow_batch.lineage.figures import FACET_NAME
from airflow_batch.rules.costs import price_table

USAGE = {"input_tokens": 100, "output_tokens": 20}


def test_a_round_with_reused_answers_reports_their_file_and_what_they_saved(tmp_path: Path) -> None:
    round_dir = tmp_path / "round-0"
    (round_dir / "results").mkdir(parents=True)
    (round_dir / "failures").mkdir()
    results, failures, reused = (
        round_dir / "results" / "msgbatch_a.jsonl",
        round_dir / "failures" / "msgbatch_a.jsonl",
        round_dir / "reused.jsonl",
    )
    results.write_text('{"custom_id": "a"}\n{"custom_id": "b"}\n')
    failures.write_text('{"custom_id": "c"}\n')
    rows = [
        {"custom_id": f"r{i}", "model": "claude-haiku-4-5", "reused_from": {"usage": USAGE}} for i in range(3)
    ]
    reused.write_text("".join(json.dumps(row) + "\n" for row in rows))
    manifest = {
        "stage": "gathered",
        "job_dir": str(tmp_path),
        "round": 0,
        "requests": 3,
        "reused": 3,
        "reused_path": str(reused),
        "batches": [
            {"chunk": 0, "batch_id": "msgbatch_a", "chunk_path": str(round_dir / "chunks" / "c.jsonl")}
        ],
        "results_paths": [str(reused), str(results)],
        "failures_paths": [str(failures)],
        "result_counts": {"succeeded": 2, "errored": 1},
        "usage_by_model": {"claude-haiku-4-5": USAGE},
        "cost": {"batch_usd": 0.1, "standard_usd": 0.2},
    }

    lineage = gathered_lineage(manifest, price_table())

    outputs = {o.name: o.outputFacets["outputStatistics"] for o in lineage.outputs}
    assert (outputs[str(round_dir / "results")].rowCount, outputs[str(round_dir / "results")].fileCount) == (
        2,
        1,
    )
    assert outputs[str(round_dir / "results")].size == results.stat().st_size
    assert (outputs[str(reused)].rowCount, outputs[str(reused)].size) == (3, reused.stat().st_size)
    assert [i.name for i in lineage.inputs] == [str(round_dir / "chunks")]
    facet = lineage.run_facets[FACET_NAME]
    assert facet.reuse["answers"] == 3
    assert facet.reuse["savedBatchUsd"] == pytest.approx(
        3 * price_table().cost({"claude-haiku-4-5": USAGE})["batch_usd"], abs=3e-6
    )
    assert lineage.run_facets["externalQuery"].externalQueryId == "msgbatch_a"


def test_a_jobs_failures_per_model_count_once_where_they_ended() -> None:
    from airflow_batch.gather.gathering import by_named_model, unnamed_owner
    from airflow_batch.lineage.figures import model_counts

    # Round 0 asked for the alias; the answers name the dated id; errored results name no model.
    round_0_counts = {"claude-haiku-4-5-20251001": {"succeeded": 7, "invalid_output": 1}, "": {"errored": 2}}
    owner = unnamed_owner(round_0_counts, ["claude-haiku-4-5"])
    round_0 = {
        "requests_by_model": {"claude-haiku-4-5": 10},
        "result_counts_by_model": by_named_model(round_0_counts, owner),
        "retryable_by_model": by_named_model({"": {"errored": 1}}, owner),
    }
    assert round_0["result_counts_by_model"] == {
        "claude-haiku-4-5-20251001": {"succeeded": 7, "invalid_output": 1, "errored": 2}
    }
    round_1 = {
        "requests_by_model": {"claude-haiku-4-5": 1},
        "result_counts_by_model": {"claude-haiku-4-5-20251001": {"succeeded": 1}},
        "retryable_by_model": {},
    }
    # The one retried errored request succeeded in round 1: the job has 1 errored, 1 invalid_output.
    assert model_counts([round_0, round_1]) == {
        "claude-haiku-4-5-20251001": {
            "requests": 10,
            "succeeded": 8,
            "failed": 2,
            "failedByType": {"invalid_output": 1, "errored": 1},
        }
    }
    # Alone, round 0 reports its own failures.
    assert model_counts([round_0])["claude-haiku-4-5-20251001"]["failedByType"] == {
        "invalid_output": 1,
        "errored": 2,
    }
    # Two models in a round: a failure that names none cannot be given to either.
    two = {"claude-haiku-4-5": {"succeeded": 1}, "": {"expired": 1}}
    assert unnamed_owner(two, ["claude-haiku-4-5", "claude-opus-4-5"]) == "unknown"
