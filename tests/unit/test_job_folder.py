"""JobFolder: a file that is missing, unreadable or damaged is each its own error, and writes are fenced."""

from __future__ import annotations

import ast
import inspect
import threading
from pathlib import Path
from typing import Any

import pytest

from airflow_batch import layout
from airflow_batch.exceptions import JobFileDamagedError, JobFileMissingError, JobFileUnreadableError
from airflow_batch.folder import JobFolder
from airflow_batch.storage import FenceLost, read_json

MANIFEST = {"version": 1, "stage": "gathered", "round": 0, "job_dir": "j", "batches": []}
LEDGER = {"version": 1, "job_dir": "j", "round": 0, "fingerprint": "f", "created_at": "t", "generation": 1}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_missing_round_manifest_is_a_missing_file_naming_it_and_the_fix(tmp_path: Path) -> None:
    folder = JobFolder(str(tmp_path))
    with pytest.raises(JobFileMissingError, match=r"manifest of round 0 .* is missing") as caught:
        folder.read_round_manifest(0)
    assert caught.value.path.endswith("round-0/manifest.json")
    assert "Clear the gather of round 0" in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)  # callers that caught FileNotFoundError still do


def test_a_file_the_store_will_not_give_is_unreadable_not_missing(tmp_path: Path) -> None:
    # A folder where the file should be: the read fails with an OSError that is not "not found"
    # (the tests run as root, so a file without read permission would still be read).
    (tmp_path / "round-0" / "manifest.json").mkdir(parents=True)
    folder = JobFolder(str(tmp_path))
    with pytest.raises(JobFileUnreadableError, match=r"could not be read") as caught:
        folder.read_round_manifest(0)
    assert not isinstance(caught.value, FileNotFoundError)
    assert caught.value.path.endswith("round-0/manifest.json")
    assert "read access" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object, found list"),
        ('{"version": 7, "round": 0}', "version 7 is not 1"),
        ('{"version": 1, "round": 3}', "names round 3"),
    ],
)
def test_a_damaged_round_manifest_says_what_is_wrong(tmp_path: Path, text: str, problem: str) -> None:
    _write(tmp_path / "round-0" / "manifest.json", text)
    with pytest.raises(JobFileDamagedError, match=problem) as caught:
        JobFolder(str(tmp_path)).read_round_manifest(0)
    assert caught.value.path.endswith("round-0/manifest.json")
    assert isinstance(caught.value, ValueError)


def test_a_ledger_is_validated_as_if_a_stranger_wrote_it(tmp_path: Path) -> None:
    folder = JobFolder(str(tmp_path))
    assert folder.read_ledger(0) is None  # a round not started yet has none: not an error
    _write(tmp_path / "round-0" / "ledger.json", '{"version": 1, "round": 0}')
    with pytest.raises(JobFileDamagedError, match="lacks job_dir, fingerprint"):
        folder.read_ledger(0)
    _write(
        tmp_path / "round-0" / "ledger.json", '{"version": 2, "job_dir": "j", "round": 0, "fingerprint": "f"}'
    )
    with pytest.raises(JobFileDamagedError, match="version 2 is not 1"):
        folder.read_ledger(0)


def test_landed_batch_stats_without_their_paths_are_damaged(tmp_path: Path) -> None:
    folder = JobFolder(str(tmp_path))
    assert folder.read_batch_stats(0, "msgbatch_1") is None  # not landed yet
    _write(tmp_path / "round-0" / "results" / "msgbatch_1.stats.json", '{"batch_id": "msgbatch_1"}')
    with pytest.raises(JobFileDamagedError, match="stats of landed batch msgbatch_1"):
        folder.read_batch_stats(0, "msgbatch_1")


def test_a_missing_spec_is_an_empty_one_but_a_damaged_spec_raises(tmp_path: Path) -> None:
    folder = JobFolder(str(tmp_path))
    assert folder.read_spec() == {}
    folder.write_spec({"output_schema": None, "passthrough_fields": ["sku"]})
    assert folder.read_spec()["passthrough_fields"] == ["sku"]
    _write(tmp_path / "job.json", '"a string"')
    with pytest.raises(JobFileDamagedError, match=r"spec of job .* expected a JSON object"):
        folder.read_spec()


def test_read_results_of_a_damaged_job_manifest_names_the_file(tmp_path: Path) -> None:
    from airflow_batch.results import job_manifest

    with pytest.raises(JobFileMissingError, match="finalize writes the manifest last"):
        job_manifest(str(tmp_path))
    _write(tmp_path / "manifest.json", '{"stage": "finalized"}')
    with pytest.raises(JobFileDamagedError, match="no results_path"):
        job_manifest(str(tmp_path / "manifest.json"))


def test_rounds_are_read_up_to_the_first_missing_manifest(tmp_path: Path) -> None:
    folder = JobFolder(str(tmp_path))
    folder.write_round_manifest(MANIFEST)  # type: ignore[arg-type]
    folder.write_round_manifest({**MANIFEST, "round": 1})  # type: ignore[typeddict-item]
    folder.write_round_manifest({**MANIFEST, "round": 3})  # type: ignore[typeddict-item]
    assert [m["round"] for m in folder.read_rounds()] == [0, 1]


def test_two_writers_of_one_ledger_the_second_loses_the_fence(tmp_path: Path) -> None:
    """Both read generation 1 at once, both write over it: one wins, the other is fenced out."""
    first = JobFolder(str(tmp_path))
    first.replace_ledger(0, LEDGER, lambda current: current is None)
    both_read = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def writer(name: str) -> None:
        folder = JobFolder(str(tmp_path))  # each writer its own object, as two processes would have
        seen = folder.read_ledger(0)
        assert seen is not None
        both_read.wait(timeout=30)
        fence = (seen["created_at"], seen["generation"])

        def holds(current: Any) -> bool:
            return current is not None and (current["created_at"], current["generation"]) == fence

        try:
            folder.replace_ledger(0, {**seen, "generation": seen["generation"] + 1, "writer": name}, holds)
            outcomes[name] = "wrote"
        except FenceLost:
            outcomes[name] = "fenced out"

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes.values()) == ["fenced out", "wrote"]
    winner = next(name for name, outcome in outcomes.items() if outcome == "wrote")
    stored = read_json(first.ledger_path(0))
    assert (stored["writer"], stored["generation"]) == (winner, 2)


#: The functions of :mod:`airflow_batch.layout` that name a file or folder of a job (or its task history).
JOB_PATH_FUNCTIONS = {
    "job_dir", "task_history_path", "round_dir", "chunks_dir", "chunk_path", "inputs_dir",
    "chunk_inputs_path", "ledger_path", "invalid_input_path", "reused_path", "results_part",
    "failures_part", "gather_stats_path", "refusal_path", "progress_path", "round_manifest_path",
    "job_spec_path", "retry_requests_path", "final_results_path", "final_failures_path", "final_table_path",
    "final_manifest_path", "uploads_dir", "answer_receipt_path",
}  # fmt: skip


def _job_paths_built(source: Path) -> set[tuple[int, str]]:
    """Return (line, function) of every job-folder path function of ``layout`` that ``source`` uses."""
    used: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "layout":
            used.add((node.lineno, node.attr))
        elif isinstance(node, ast.ImportFrom) and node.module == "airflow_batch.layout":
            used.update((node.lineno, alias.name) for alias in node.names)
    return {(line, name) for line, name in used if name in JOB_PATH_FUNCTIONS}


def test_no_module_but_job_folder_builds_a_job_folder_path() -> None:
    assert set(vars(layout)) >= JOB_PATH_FUNCTIONS, "a function listed here is no longer in layout"
    package = Path(layout.__file__).parent
    # JobFolder is one class in several modules (its mixins): those, and layout itself, may.
    allowed = {Path(inspect.getfile(cls)) for cls in JobFolder.__mro__ if cls is not object}
    assert len(allowed) > 1, "JobFolder's modules were not found"
    allowed.add(Path(layout.__file__))
    offenders = [
        f"{source.relative_to(package)}:{line} {name}"
        for source in sorted(package.rglob("*.py"))
        if source not in allowed
        for line, name in sorted(_job_paths_built(source))
    ]
    assert offenders == [], "use JobFolder for these job-folder paths"
