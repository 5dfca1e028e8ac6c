"""The one JSONL reader: blocks cut at line ends, from local files and object stores alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_batch.storage import (
    as_path,
    iter_jsonl,
    iter_jsonl_blocks,
    iter_jsonl_lines,
    iter_lines,
    line_blocks,
)


def _lines(tmp_path: Path, data: bytes, block_size: int) -> list[bytes]:
    source = tmp_path / "input.jsonl"
    source.write_bytes(data)
    return list(iter_jsonl_lines(as_path(str(source)), block_size=block_size))


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 7, 64, 1 << 21])
def test_lines_spanning_blocks_come_back_whole(tmp_path: Path, block_size: int) -> None:
    rows = [b'{"custom_id": "r-%d", "text": "%s"}' % (i, b"x" * (i * 3)) for i in range(40)]

    assert _lines(tmp_path, b"\n".join(rows) + b"\n", block_size) == rows


@pytest.mark.parametrize("block_size", [1, 4, 1 << 21])
def test_crlf_line_ends_are_removed(tmp_path: Path, block_size: int) -> None:
    data = b'{"a": 1}\r\n{"a": 2}\r\n{"a": 3}\r\n'

    assert _lines(tmp_path, data, block_size) == [b'{"a": 1}', b'{"a": 2}', b'{"a": 3}']


@pytest.mark.parametrize("block_size", [1, 3, 1 << 21])
def test_empty_and_blank_lines_are_skipped(tmp_path: Path, block_size: int) -> None:
    data = b'\n\n{"a": 1}\n\n  \n\r\n{"a": 2}\n\n'

    assert _lines(tmp_path, data, block_size) == [b'{"a": 1}', b'{"a": 2}']


@pytest.mark.parametrize("block_size", [1, 5, 1 << 21])
def test_last_line_without_newline_is_kept(tmp_path: Path, block_size: int) -> None:
    assert _lines(tmp_path, b'{"a": 1}\n{"a": 22}', block_size) == [b'{"a": 1}', b'{"a": 22}']
    assert _lines(tmp_path, b'{"only": true}', block_size) == [b'{"only": true}']


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 1 << 21])
def test_every_line_keeps_its_number_blank_ones_as_empty_bytes(tmp_path: Path, block_size: int) -> None:
    source = tmp_path / "input.jsonl"
    source.write_bytes(b'{"a": 1}\r\n\n  \r\n{"a": 2}\n\n{"a": 3}')

    lines = list(iter_lines(as_path(str(source)), block_size=block_size))

    assert lines == [b'{"a": 1}', b"", b"  ", b'{"a": 2}', b"", b'{"a": 3}']


def test_empty_file_yields_nothing(tmp_path: Path) -> None:
    assert _lines(tmp_path, b"", 1 << 21) == []
    source = tmp_path / "input.jsonl"
    assert list(iter_jsonl_blocks(as_path(str(source)))) == []
    assert list(iter_lines(as_path(str(source)))) == []
    assert list(iter_jsonl(as_path(str(source)))) == []


def test_file_is_read_in_blocks_never_by_readline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On s3fs, ``readline`` copies the rest of the cached block per line: it must not be used."""
    import fsspec.implementations.local as local

    sizes: list[int] = []
    original_read = local.LocalFileOpener.read

    def read(self: local.LocalFileOpener, *args: int) -> bytes:
        sizes.extend(args)
        return original_read(self, *args)

    def readline(self: local.LocalFileOpener, *args: int) -> bytes:
        raise AssertionError("readline called")

    monkeypatch.setattr(local.LocalFileOpener, "read", read)
    monkeypatch.setattr(local.LocalFileOpener, "readline", readline)
    monkeypatch.setattr(local.LocalFileOpener, "__iter__", readline)
    rows = [b'{"n": %d}' % i for i in range(1000)]

    assert _lines(tmp_path, b"\n".join(rows), 4096) == rows
    assert sizes and set(sizes) == {4096}


def test_blocks_end_at_line_ends_and_keep_every_byte() -> None:
    chunks = [b'{"a"', b": 1}\n{", b'"a": 2}\n{"a": 3}\n{"a":', b" 4}", b"\n  "]

    blocks = list(line_blocks(chunks))

    assert all(block.endswith(b"\n") for block in blocks)
    assert b"".join(blocks) == b'{"a": 1}\n{"a": 2}\n{"a": 3}\n{"a": 4}\n'


def test_a_line_longer_than_many_chunks_is_one_block() -> None:
    line = b'{"text": "' + b"y" * 10_000 + b'"}'
    chunks = [line[i : i + 7] for i in range(0, len(line), 7)] + [b"\n", b'{"b": 1}']

    assert list(line_blocks(chunks)) == [line + b"\n", b'{"b": 1}']


def test_small_reads_are_gathered_into_blocks_of_at_least_min_bytes() -> None:
    body = b"".join(b'{"n": %d}\n' % i for i in range(5_000))
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]  # reads that cut lines anywhere

    blocks = list(line_blocks(chunks, min_bytes=16_384))

    assert b"".join(blocks) == body
    assert all(block.endswith(b"\n") for block in blocks)
    assert all(len(block) >= 16_384 for block in blocks[:-1]) and len(blocks) < len(chunks) / 10
