"""The storage layer on a real S3 API (a moto server): block reads, atomic writes, the operators' reads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from local_services import MotoS3

from airflow_batch.storage import as_path, atomic_writer, copy_file, iter_jsonl, iter_jsonl_lines

BUCKET = "storage-tests"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with MotoS3(tmp_path_factory.mktemp("moto")) as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture
def s3_conn(s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Define ``aws_default`` (endpoint_url at moto) for this test; return the URI prefix."""
    from airflow.sdk.io import store
    from s3fs import S3FileSystem

    for name, value in s3.connection_env("aws_default").items():
        monkeypatch.setenv(name, value)
    # Airflow and s3fs cache the aws_default filesystem with the endpoint it was first built with
    # (another module's moto server, when tests run together): build it again for this one.
    store._STORE_CACHE.clear()
    S3FileSystem.clear_instance_cache()
    yield f"s3://aws_default@{BUCKET}"
    store._STORE_CACHE.clear()  # and again after, for the next module's server
    S3FileSystem.clear_instance_cache()


def test_s3_jsonl_is_one_streamed_get_read_in_blocks_with_lines_spanning_them(
    s3: MotoS3, s3_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    def buffered(self: object, *args: object) -> bytes:
        raise AssertionError("s3fs's buffered file: readline is quadratic, read fetches 50 MB ranges")

    for name in ("read", "readline", "__iter__"):
        monkeypatch.setattr(s3fs.core.S3File, name, buffered)
    gets: list[str] = []
    call_s3 = s3fs.S3FileSystem._call_s3

    async def counting_call_s3(
        self: s3fs.S3FileSystem, method: str, *args: object, **kwargs: object
    ) -> object:
        if method == "get_object":
            gets.append(method)
        return await call_s3(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting_call_s3)
    rows = [b'{"custom_id": "r-%05d", "pad": "%s"}' % (i, b"x" * (i % 97)) for i in range(20_000)]
    s3.client().put_object(Bucket=BUCKET, Key="in/rows.jsonl", Body=b"\r\n".join(rows) + b"\r\n\n")

    lines = list(iter_jsonl_lines(as_path(f"{s3_conn}/in/rows.jsonl"), block_size=4096))

    assert lines == rows
    assert gets == ["get_object"], "one request for the whole object"


def test_s3_read_stopped_early_closes_its_response(
    s3: MotoS3, s3_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiobotocore.response import AioStreamingBody

    closed: list[bool] = []
    close = AioStreamingBody.close

    def recording_close(self: AioStreamingBody) -> None:
        closed.append(True)
        close(self)

    monkeypatch.setattr(AioStreamingBody, "close", recording_close)
    s3.client().put_object(Bucket=BUCKET, Key="in/long.jsonl", Body=b'{"n": 1}\n' * 200_000)
    lines = iter_jsonl_lines(as_path(f"{s3_conn}/in/long.jsonl"), block_size=4096)

    assert next(lines) == b'{"n": 1}'
    lines.close()
    assert closed == [True]


def test_s3_copy_is_streamed_block_by_block_and_keeps_every_byte(s3: MotoS3, s3_conn: str) -> None:
    body = bytes(range(256)) * 4099
    s3.client().put_object(Bucket=BUCKET, Key="in/blob.bin", Body=body)

    copy_file(as_path(f"{s3_conn}/in/blob.bin"), as_path(f"{s3_conn}/copies/blob.bin"), block=4096)

    assert s3.client().get_object(Bucket=BUCKET, Key="copies/blob.bin")["Body"].read() == body
    assert s3.keys(BUCKET, "copies/") == ["copies/blob.bin"]


def test_s3_atomic_write_then_read_leaves_only_the_file(s3: MotoS3, s3_conn: str) -> None:
    target = as_path(f"{s3_conn}/out/part.jsonl")
    with atomic_writer(target) as handle:
        for i in range(1000):
            handle.write(b'{"n": %d}\n' % i)

    assert [row["n"] for row in iter_jsonl(target)] == list(range(1000))
    assert s3.keys(BUCKET, "out/") == ["out/part.jsonl"]


def test_s3_empty_object_yields_no_line(s3: MotoS3, s3_conn: str) -> None:
    s3.client().put_object(Bucket=BUCKET, Key="in/empty.jsonl", Body=b"")

    assert list(iter_jsonl_lines(as_path(f"{s3_conn}/in/empty.jsonl"))) == []


def test_s3_missing_object_raises_file_not_found(s3: MotoS3, s3_conn: str) -> None:
    with pytest.raises(FileNotFoundError):
        list(iter_jsonl_lines(as_path(f"{s3_conn}/in/missing.jsonl")))


def test_s3_ledger_saves_are_fenced_by_conditional_puts(s3: MotoS3, s3_conn: str) -> None:
    from airflow_batch.exceptions import LedgerFencedOutError
    from airflow_batch.submit.ledger import Ledger, LedgerStore

    job = as_path(f"{s3_conn}/fenced/job")
    first, second = LedgerStore(job, 0), LedgerStore(job, 0)
    assert first.load() is None and second.load() is None
    second.save(Ledger(job_dir=str(job), round=0, fingerprint="f", conn_id="c"))
    with pytest.raises(LedgerFencedOutError):  # If-None-Match: * refused: the ledger exists now
        first.save(Ledger(job_dir=str(job), round=0, fingerprint="f", conn_id="c"))
    mine, theirs = first.load(), second.load()
    assert mine is not None and theirs is not None
    theirs.batches[0] = {"batch_id": "msgbatch_theirs"}
    second.save(theirs)
    mine.batches[0] = {"batch_id": "msgbatch_mine"}
    with pytest.raises(LedgerFencedOutError):  # a stale writer overwrites nothing
        first.save(mine)
    stored = LedgerStore(job, 0).load()
    assert stored is not None and stored.batch_id(0) == "msgbatch_theirs" and stored.generation == 2


def test_s3_conditional_put_refuses_a_write_between_read_and_put(s3: MotoS3, s3_conn: str) -> None:
    import threading

    from airflow_batch.storage import FenceLost, read_json, replace_json_fenced

    target = as_path(f"{s3_conn}/fenced/counter.json")
    replace_json_fenced(target, {"count": 0}, lambda stored: stored is None)
    lost = [0]

    def add(times: int) -> None:
        done = 0
        while done < times:
            seen = read_json(target)
            try:
                replace_json_fenced(target, {"count": seen["count"] + 1}, lambda stored, s=seen: stored == s)
                done += 1
            except FenceLost:
                lost[0] += 1

    writers = [threading.Thread(target=add, args=(15,)) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert read_json(target)["count"] == 60, f"no increment lost ({lost[0]} retries)"
