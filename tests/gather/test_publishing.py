"""Publishing as a whole, through ``dag.test()`` against the emulator.

Rule (issue 23, class 6): a reader of a published folder always sees one complete job's files or
the previous one's, and knows which; stale files of an earlier job never stand beside a new
manifest; a second DAG publishing to the same folder is refused; a templated ``publish_path``
cannot climb out of its root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import run_dag

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.gather import publishing
from airflow_batch.gather.publishing import check_publish_path, publish_root
from airflow_batch.results import job_manifest, read_results, read_table

N = 20


def _records(path: Path) -> Path:
    path.write_bytes(
        b"".join(msgspec.json.encode({"id": f"r{i}", "text": f"lamp {i}"}) + b"\n" for i in range(N))
    )
    return path


def _run(
    dag_id: str, day: int, records: Path, tmp_path: Path, conn_id: str, params: Any = None, **kwargs: Any
) -> Any:
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1), params=params or {}) as dag:
        anthropic_batch_job(
            "job",
            records=str(records),
            prompt_template="Rate: {text}",
            custom_id_field="id",
            model="claude-haiku-4-5",
            max_tokens=32,
            output_path=str(tmp_path / "out"),
            conn_id=conn_id,
            poll_interval=0.5,
            submit_kwargs={"count_tokens_sample": 0},
            **kwargs,
        )
    date = pendulum.datetime(2026, 2, day)
    return run_dag(dag, logical_date=date, run_after=date)


def _job_dir(dag_id: str, run: Any, tmp_path: Path) -> str:
    return str(layout.job_dir(str(tmp_path / "out"), dag_id, run.run_id, "job.submit"))


def _read_whole(folder: Path) -> dict[str, Any]:
    """Read a published folder as a reader would: its manifest, then every file it names."""
    manifest = job_manifest(str(folder))
    for key in publishing.PUBLISHED_FILES:
        if manifest.get(key):
            assert Path(str(manifest[key]).removeprefix("file://")).exists(), key
    rows = list(read_results(str(folder)))
    assert len(rows) == manifest["succeeded"] == N
    return dict(manifest)


@pytest.mark.usefixtures("airflow_db")
def test_a_publish_killed_midway_leaves_the_previous_job_whole_and_no_stale_file_beside_a_new_one(
    emulator: EmulatorProcess,
    anthropic_conn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records, folder = _records(tmp_path / "r.jsonl"), tmp_path / "published" / "latest"
    run = _run(
        "daily",
        1,
        records,
        tmp_path,
        anthropic_conn,
        publish_path=str(folder),
        results_format=["jsonl", "parquet"],
    )
    assert run.state == "success"
    first = _read_whole(folder)
    assert first["job_dir"] == _job_dir("daily", run, tmp_path) and first["results_parquet_path"]
    assert read_table(str(folder)).num_rows == N

    copies: list[Any] = []
    copy_file = publishing.copy_file

    def killed_after_the_first_copy(source: Any, target: Any) -> None:
        if copies:
            raise RuntimeError("worker killed while publishing")
        copies.append(target)
        copy_file(source, target)

    monkeypatch.setattr(publishing, "copy_file", killed_after_the_first_copy)
    run = _run("daily", 2, records, tmp_path, anthropic_conn, publish_path=str(folder))
    assert run.state == "failed" and copies and Path(str(copies[0]).removeprefix("file://")).exists()
    assert _read_whole(folder) == first  # the new results were copied, the reader still sees the first job
    monkeypatch.setattr(publishing, "copy_file", copy_file)

    # The same DAG publishes a job without Parquet: no results.parquet of the first job beside it.
    run = _run("daily", 3, records, tmp_path, anthropic_conn, publish_path=str(folder))
    assert run.state == "success"
    third = _read_whole(folder)
    assert third["job_dir"] == _job_dir("daily", run, tmp_path) != first["job_dir"]
    assert third["results_parquet_path"] is None and third["published_version"] > first["published_version"]
    current = folder / "versions" / third["published_version"]
    assert sorted(p.name for p in current.iterdir()) == ["failures.jsonl", "manifest.json", "results.jsonl"]
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "versions"]
    assert read_table(str(folder)).num_rows == N  # built from the JSONL: no stale Parquet read
    # One more publish: versions older than the previous one are gone, the previous one stays.
    run = _run("daily", 4, records, tmp_path, anthropic_conn, publish_path=str(folder))
    fourth = _read_whole(folder)
    assert sorted(p.name for p in (folder / "versions").iterdir()) == [
        third["published_version"], fourth["published_version"]
    ]  # fmt: skip


@pytest.mark.usefixtures("airflow_db")
def test_a_second_dag_publishing_to_the_same_folder_is_refused_and_replaces_nothing(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    records, folder = _records(tmp_path / "r.jsonl"), tmp_path / "published" / "shared"
    assert (
        _run("owner_dag", 1, records, tmp_path, anthropic_conn, publish_path=str(folder)).state == "success"
    )
    before = _read_whole(folder)
    assert before["published_by"] == "owner_dag.job.finalize"
    capfd.readouterr()
    run = _run("other_dag", 1, records, tmp_path, anthropic_conn, publish_path=str(folder))
    logged = "".join(capfd.readouterr())
    assert run.state == "failed" and "PublishConflictError" in logged and "owner_dag.job.finalize" in logged
    assert _read_whole(folder) == before
    other = Path(_job_dir("other_dag", run, tmp_path).removeprefix("file://"))
    assert (other / "results.jsonl").exists()  # its own files are written


@pytest.mark.usefixtures("airflow_db")
def test_a_templated_publish_path_cannot_climb_out_of_its_root(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    records = _records(tmp_path / "r.jsonl")
    root = str(tmp_path / "published") + "/"
    run = _run(
        "climbing", 1, records, tmp_path, anthropic_conn, publish_path=root + "{{ params.day }}",
        params={"day": "../escaped"},
    )  # fmt: skip
    assert run.state == "failed"
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "published").exists()


def test_publish_path_rules_name_the_setting() -> None:
    root = publish_root("s3://bucket/reviews/{{ ds }}/")
    assert root == "s3://bucket/reviews/" and publish_root("s3://bucket/fixed/") is None
    check_publish_path("s3://bucket/reviews/2026-01-01/", root, "publish_path")
    for climbing in (
        "s3://bucket/reviews/../secrets/",
        "s3://bucket/reviews/./x",
        "s3://bucket/reviews/a/../../b",
    ):
        with pytest.raises(ValueError, match=r"publish_path=.*'\.\.' segment"):
            check_publish_path(climbing, root, "publish_path")
    with pytest.raises(ValueError, match="not under 's3://bucket/reviews/'"):
        check_publish_path("s3://bucket/other/2026-01-01/", root, "publish_path")
