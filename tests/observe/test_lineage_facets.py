"""The facets of a gathered round with reused answers, built from a manifest and its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_batch.costs import price_table
from airflow_batch.lineage.facets import gathered_lineage
from airflow_batch.lineage.figures import FACET_NAME

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
