"""The answer store read back as if a stranger wrote it, through ``dag.test()`` against the emulator.

Rule (issue 23, classes 3 and 4): a reused answer passes the same validation as a fresh one; the
store key holds what an answer's validity depends on (endpoint, workspace, the full output
schema); a damaged, missing, forged or replaced segment is skipped and named in a warning, its
requests are sent instead, and nothing in the store fails a job.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_test_env import ANTHROPIC_TEST_KEY, run_dag

from airflow_batch import anthropic_batch_job, layout
from airflow_batch.emulator.process import EmulatorProcess
from airflow_batch.reuse.store import SegmentWriter, read_segment
from airflow_batch.rules.schema import recorded_validator
from airflow_batch.storage import as_path, read_json

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": False},
    },
    "required": ["sentiment", "tags"],
}
N = 300  # three batches of 100: three segments


def _records(path: Path) -> Path:
    with path.open("wb") as out:
        for i in range(N):
            out.write(msgspec.json.encode({"review_id": f"r{i:04d}", "text": f"review number {i}"}) + b"\n")
    return path


def _run(
    dag_id: str,
    records: Path,
    output: str,
    conn_id: str,
    *,
    schema: dict[str, Any] | None = SCHEMA,
    **kwargs: Any,
) -> tuple[Any, Path]:
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "reviews",
            records=str(records),
            prompt_template="Rate this review: {text}",
            custom_id_field="review_id",
            output_schema=schema,
            model="claude-haiku-4-5",
            max_tokens=200,
            output_path=output,
            conn_id=conn_id,
            max_retry_rounds=0,
            poll_interval=0.5,
            reuse_answers=True,
            submit_kwargs={"max_requests_per_batch": 100, "count_tokens_sample": 0},
            keep_chunks=True,  # the tests compare what was sent
            **kwargs,
        )
    run = run_dag(dag)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    return run, Path(
        str(layout.job_dir(output, dag.dag_id, run.run_id, "reviews.submit")).removeprefix("file://")
    )


def _rows(job: Path) -> list[dict[str, Any]]:
    data = layout.final_results_path(as_path(str(job))).read_bytes()
    return [msgspec.json.decode(line) for line in data.splitlines()]


def _reused(job: Path) -> int:
    return int(read_json(layout.final_manifest_path(as_path(str(job))))["reused"])


def _sent_lines(job: Path) -> list[bytes]:
    chunks = sorted((job / "round-0" / "chunks").glob("*.jsonl"))
    return sorted(line for chunk in chunks for line in chunk.read_bytes().splitlines())


def _assert_every_row_valid(job: Path, schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Assert every result row is valid for ``schema`` and every request has a row; return the failures."""
    validator = recorded_validator(schema)
    rows = _rows(job)
    for row in rows:
        assert "output" in row and validator.check(json.dumps(row["output"])) is None, row
    data = layout.final_failures_path(as_path(str(job))).read_bytes()
    failures = [msgspec.json.decode(line) for line in data.splitlines()]
    assert len(rows) + len(failures) == N
    return failures


def _segments(store: Path) -> list[Path]:
    return sorted((store / "v2" / "segments").glob("*.answers"))


@pytest.mark.usefixtures("airflow_db")
def test_answers_stored_without_a_schema_are_not_reused_by_a_job_with_one(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    records, output = _records(tmp_path / "r.jsonl"), str(tmp_path / "out")
    _run("plain_first", records, output, anthropic_conn, schema=None)
    created = emulator.batch_count()
    _, job = _run("schema_second", records, output, anthropic_conn)
    assert emulator.batch_count() == created + 3 and _reused(job) == 0
    _assert_every_row_valid(job, SCHEMA)


@pytest.mark.usefixtures("airflow_db")
def test_two_schemas_sending_the_same_request_but_checking_differently_share_no_answer(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    # uniqueItems true or false: the API's grammar enforces neither, the request is the same
    # (its description says "Must be unique items." both ways), but only one refuses duplicates.
    strict = copy.deepcopy(SCHEMA)
    strict["properties"]["tags"]["uniqueItems"] = True
    records, output = _records(tmp_path / "r.jsonl"), str(tmp_path / "out")
    _, lenient_job = _run("lenient", records, output, anthropic_conn)
    created = emulator.batch_count()
    _, strict_job = _run("strict", records, output, anthropic_conn, schema=strict)
    assert _sent_lines(strict_job) == _sent_lines(lenient_job), "the requests differ: no proof"
    assert emulator.batch_count() == created + 3 and _reused(strict_job) == 0
    # The lenient job's answers all passed; some are duplicates the strict one refuses.
    assert len(_rows(lenient_job)) == N
    failures = _assert_every_row_valid(strict_job, strict)
    assert failures and {row["result_type"] for row in failures} == {"invalid_output"}
    # The same schema again reuses everything: the scope is the schema, not the run.
    _, again = _run("strict", records, output, anthropic_conn, schema=strict)
    assert _reused(again) == N - len(failures) and emulator.batch_count() == created + 4


@pytest.mark.usefixtures("airflow_db")
def test_answers_cross_neither_endpoints_nor_workspaces(
    emulator: EmulatorProcess,
    emulator_session: EmulatorProcess,
    anthropic_conn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records, output = _records(tmp_path / "r.jsonl"), str(tmp_path / "out")
    _run("first_endpoint", records, output, anthropic_conn)
    created = emulator.batch_count()
    _, workspace_job = _run("other_workspace", records, output, anthropic_conn, workspace_id="wrkspc_b")
    assert _reused(workspace_job) == 0 and emulator.batch_count() == created + 3
    monkeypatch.setenv(
        "AIRFLOW_CONN_ANTHROPIC_OTHER",
        json.dumps(
            {"conn_type": "anthropic", "password": ANTHROPIC_TEST_KEY, "host": emulator_session.base_url}
        ),
    )
    before = emulator_session.batch_count()
    _, endpoint_job = _run("other_endpoint", records, output, "anthropic_other")
    assert _reused(endpoint_job) == 0 and emulator_session.batch_count() == before + 3


def _flip_a_byte(store: Path, first_job: Path) -> str:
    answers = _segments(store)[0]
    data = bytearray(answers.read_bytes())
    data[len(data) // 2] ^= 0x01
    answers.write_bytes(bytes(data))
    return answers.name


def _answers_in_the_flipped_shard(store: Path) -> int:
    """Return how many answers share the shard ``_flip_a_byte`` damages (its checksum fails, they are
    sent): 100 answers over the 256 shards by key, and a key holds the endpoint's random port."""
    answers = _segments(store)[0]
    middle = answers.stat().st_size // 2
    offsets = read_segment(as_path(str(answers.with_suffix(".keys")))).offsets
    shard = next(shard for shard in range(len(offsets) - 1) if offsets[shard] <= middle < offsets[shard + 1])
    return answers.read_bytes()[offsets[shard] : offsets[shard + 1]].count(b"\n")


def _truncate_answers(store: Path, first_job: Path) -> str:
    answers = _segments(store)[0]
    answers.write_bytes(answers.read_bytes()[: answers.stat().st_size // 3])
    return answers.name


def _delete_answers(store: Path, first_job: Path) -> str:
    answers = _segments(store)[0]
    answers.unlink()
    return answers.name


def _truncate_keys(store: Path, first_job: Path) -> str:
    keys = _segments(store)[0].with_suffix(".keys")
    keys.write_bytes(keys.read_bytes()[:1000])
    return keys.name


def _forge_newer(store: Path, first_job: Path, *, keep_name: bool) -> str:
    """Rewrite a segment's answers (some schema-valid but wrong) as newer, as a stranger who can write
    the store but not the job folder that wrote it."""
    answers = _segments(store)[0]
    name = answers.name.removesuffix(".answers")
    segment = read_segment(as_path(str(answers.with_suffix(".keys"))))
    receipt = Path(str(layout.answer_receipt_path(as_path(str(first_job)), name)).removeprefix("file://"))
    genuine_receipt = receipt.read_bytes()
    model = b'{"model":"claude-haiku-4-5","stop_reason":"end_turn","text":'
    invalid = model + b'"{\\"sentiment\\":\\"forged\\",\\"tags\\":[]}"}'
    valid = model + b'"{\\"sentiment\\":\\"neutral\\",\\"tags\\":[\\"forged\\"]}"}'
    writer = SegmentWriter()
    for line in answers.read_bytes().splitlines():
        writer.add(
            line[:32], valid if line[0] % 2 else invalid, b'{"job_dir":"%s"}' % str(first_job).encode()
        )
    target = name if keep_name else "batch-forged"
    writer.commit(as_path(str(store)), target, as_path(str(first_job)), segment.written_at + 60)
    if keep_name:
        receipt.write_bytes(genuine_receipt)
    else:
        Path(
            str(layout.answer_receipt_path(as_path(str(first_job)), target)).removeprefix("file://")
        ).unlink()
    return f"{target}.answers"


def _corrupt_bodies(store: Path, first_job: Path) -> str:
    """Rewrite a segment with undecodable answer bodies, checksummed and vouched for by its own job
    (a writer's bug, not a stranger): every answer is still judged before it is used."""
    answers = _segments(store)[0]
    name = answers.name.removesuffix(".answers")
    segment = read_segment(as_path(str(answers.with_suffix(".keys"))))
    writer = SegmentWriter()
    for line in answers.read_bytes().splitlines():
        writer.add(line[:32], b'{"model":"claude-haiku-4-5","text":"{\\"sentiment', b'{"job_dir":"x"}')
    writer.commit(as_path(str(store)), name, as_path(str(first_job)), segment.written_at)
    return answers.name


#: damage -> (what it does to the store, requests reused at most / at least, batches created);
#: None: at least all but the answers of the damaged shard (``_answers_in_the_flipped_shard``).
DAMAGE: dict[str, tuple[Callable[[Path, Path], str], int | None, int, int]] = {
    "a flipped byte": (_flip_a_byte, None, N - 1, 1),
    "a truncated answers file": (_truncate_answers, N - 100, N - 1, 1),
    "a missing answers file": (_delete_answers, N - 100, N - 100, 1),
    "a truncated keys file": (_truncate_keys, N - 100, N - 100, 1),
    "corrupt answer bodies its own job vouches for": (_corrupt_bodies, N - 100, N - 100, 1),
    "a forged newer segment under a genuine name": (
        lambda s, j: _forge_newer(s, j, keep_name=True),
        N - 100,
        N - 100,
        1,
    ),
    "a forged newer segment under a new name": (lambda s, j: _forge_newer(s, j, keep_name=False), N, N, 0),
}


@pytest.mark.usefixtures("airflow_db")
def test_a_damaged_or_forged_store_is_skipped_named_and_answered_by_sending(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    records, output = _records(tmp_path / "r.jsonl"), str(tmp_path / "out")
    _, first_job = _run("writer", records, output, anthropic_conn)
    pristine = tmp_path / "out" / "_answers"
    truth = {row["custom_id"]: row["output"] for row in _rows(first_job)}
    receipts = first_job / "answer-receipts"
    shutil.copytree(receipts, tmp_path / "receipts")
    for number, (what, (damage, least, most, batches)) in enumerate(DAMAGE.items()):
        store = tmp_path / f"store-{number}"
        shutil.copytree(pristine, store)
        if least is None:
            least = N - _answers_in_the_flipped_shard(store)
        shutil.rmtree(receipts)  # each case starts from the writer's own receipts
        shutil.copytree(tmp_path / "receipts", receipts)
        named = damage(store, first_job)
        capfd.readouterr()
        created = emulator.batch_count()
        _, job = _run(f"reader_{number}", records, output, anthropic_conn, answer_store=str(store))
        logged = "".join(capfd.readouterr())
        # What the damaged segment held is sent (one batch) or served by a sound one; the rest reused.
        assert least <= _reused(job) <= most and emulator.batch_count() - created == batches, what
        assert named in logged and "warning" in logged, what
        _assert_every_row_valid(job, SCHEMA)
        rows = _rows(job)
        assert all("forged" not in row["output"]["tags"] for row in rows), what
        reused = [row for row in rows if row.get("reused_from")]
        assert all(row["output"] == truth[row["custom_id"]] for row in reused), what


@pytest.mark.usefixtures("airflow_db")
def test_rows_answered_without_a_batch_keep_content_when_the_job_keeps_it(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    records, output = _records(tmp_path / "r.jsonl"), str(tmp_path / "out")
    _run("without_content", records, output, anthropic_conn, canary=5)
    created = emulator.batch_count()
    # Stored without content blocks: a job that keeps them sends every request again.
    _, job = _run("with_content", records, output, anthropic_conn, canary=5, include_content=True)
    assert _reused(job) == 0 and emulator.batch_count() == created + 3
    rows = _rows(job)
    assert len(rows) == N and all(row["content"] for row in rows)
    assert sum(1 for row in rows if (row.get("reused_from") or {}).get("canary")) == 5
    _, again = _run("with_content", records, output, anthropic_conn, include_content=True)
    assert _reused(again) == N and emulator.batch_count() == created + 3
    assert all(row["content"] for row in _rows(again))
