"""Request fingerprints and the answer store: keys, shards, ages, resolution of hits."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from airflow_batch import layout
from airflow_batch.reuse.check import ReuseCheck
from airflow_batch.reuse.fingerprint import Fingerprints, fingerprint_key
from airflow_batch.reuse.hits import HitSpill, resolve_hits
from airflow_batch.reuse.store import SHARDS, SegmentWriter, load_index, read_segment
from airflow_batch.rules.params import convert_request, decode_line
from airflow_batch.storage import as_path
from airflow_batch.submit.chunking import prepare_chunks
from airflow_batch.submit.routing import Routing

PARAMS: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "system": "You label reviews.",
    "messages": [{"role": "user", "content": "Label: the lamp broke after a week"}],
    "temperature": 0.5,
}


def _typed(params: dict[str, Any], custom_id: str = "a") -> Any:
    return convert_request({"custom_id": custom_id, "params": params}).params


@pytest.mark.parametrize(
    "change",
    [
        {"model": "claude-sonnet-4-5"},
        {"max_tokens": 65},
        {"system": "You label reviews!"},
        {"messages": [{"role": "user", "content": "Label: the lamp broke after a day"}]},
        {"temperature": 0.6},
        {"top_k": 5},
        {"stop_sequences": ["END"]},
        {"metadata": {"user_id": "u1"}},
        {"thinking": {"type": "adaptive"}},
        {"tools": [{"name": "label", "input_schema": {"type": "object"}}]},
        {
            "output_config": {
                "format": {"type": "json_schema", "schema": {"type": "object", "additionalProperties": False}}
            }
        },
    ],
)
def test_any_param_that_can_change_the_answer_changes_the_fingerprint(change: dict[str, Any]) -> None:
    fingerprints = Fingerprints()
    assert fingerprints.of(_typed({**PARAMS, **change})) != fingerprints.of(_typed(PARAMS))


def test_the_fingerprint_leaves_out_the_custom_id_key_order_whitespace_and_number_spelling() -> None:
    fingerprints = Fingerprints()
    reference = fingerprints.of(_typed(PARAMS, "first"))
    assert fingerprints.of(_typed(PARAMS, "second-id")) == reference
    reordered = dict(reversed(list({**PARAMS, "temperature": 0.5}.items())))
    assert fingerprints.of(_typed(reordered)) == reference
    line = b'{ "custom_id": "x",\n "params": ' + msgspec.json.encode(reordered) + b"}"
    assert fingerprints.of(decode_line(line).params) == reference
    assert fingerprints.of(_typed({**PARAMS, "temperature": 1})) == fingerprints.of(
        _typed({**PARAMS, "temperature": 1.0})
    )
    assert len(reference) == 32 and int(reference, 16) >= 0
    assert fingerprint_key(reference) == int(reference[:16], 16)


def test_betas_are_part_of_the_fingerprint_and_a_lenient_job_keeps_unknown_params() -> None:
    plain = {**PARAMS, "future_param": {"b": 1, "a": 2}}
    with_beta = Fingerprints(["future-2026-01-01"])
    assert with_beta.of(plain) != Fingerprints().of(plain)
    assert with_beta.of(plain) != with_beta.of({**PARAMS, "future_param": {"a": 2, "b": 3}})
    assert with_beta.of(plain) == Fingerprints(["future-2026-01-01"]).of(dict(reversed(list(plain.items()))))


def test_a_record_and_a_jsonl_line_of_the_same_request_get_the_same_fingerprint_in_their_twin(
    tmp_path: Path,
) -> None:
    line = msgspec.json.encode({"custom_id": "line", "params": PARAMS})
    record = {"custom_id": "dict", "params": dict(reversed(list(PARAMS.items())))}
    routing = Routing(job=str(tmp_path), round_number=0)
    try:
        prepared = prepare_chunks(
            [line, record], staging=as_path(str(tmp_path / "staging")), max_requests=10,
            max_bytes=100_000, diversion=routing,
        )  # fmt: skip
    finally:
        routing.close()
    twins = [
        msgspec.json.decode(x)
        for x in (prepared.staging / "inputs" / "chunk-00000.jsonl").read_bytes().splitlines()
    ]
    assert [twin["custom_id"] for twin in twins] == ["line", "dict"]
    assert twins[0]["fingerprint"] == twins[1]["fingerprint"] == Fingerprints().of(_typed(PARAMS)).decode()


def _segment(store: Any, name: str, answers: dict[bytes, str], written_at: float) -> int:
    writer = SegmentWriter()
    for fingerprint, text in answers.items():
        answer = msgspec.json.encode({"model": "m", "stop_reason": "end_turn", "text": text})
        writer.add(fingerprint, answer, b'{"batch_id":"%s","usage":{"output_tokens":3}}' % name.encode())
    return writer.commit(store, name, _writer_job(store), written_at)


def _writer_job(store: Any) -> Any:
    """The job folder that writes a test's segments (and keeps their receipts)."""
    return as_path(f"{store}-writer-job")


def _resolve(index: Any, hits: HitSpill, out: Any, check: Any = None) -> tuple[int, list[bytes]]:
    sent: list[bytes] = []
    written = resolve_hits(index, hits, out, 0, check=check or ReuseCheck(), send_back=sent.append)
    return written, sent


def _fingerprints(n: int, salt: str = "") -> list[bytes]:
    fingerprints = Fingerprints()
    return [fingerprints.of({"n": i, "salt": salt}) for i in range(n)]


def test_a_segment_is_sharded_by_fingerprint_prefix_and_a_shard_is_one_byte_range(tmp_path: Path) -> None:
    store = as_path(str(tmp_path / "store"))
    fingerprints = _fingerprints(3_000)
    assert (
        _segment(store, "batch-1", {fp: f"answer {i}" for i, fp in enumerate(fingerprints)}, time.time())
        == 3_000
    )
    answers_path, keys_path = layout.answer_segment_paths(store, "batch-1")
    segment = read_segment(keys_path)
    assert len(segment.keys) == 3_000 and list(segment.keys) == sorted(segment.keys)
    assert segment.offsets[0] == 0 and segment.offsets[SHARDS] == answers_path.stat()["size"]
    seen = 0
    for shard in (0, 17, 128, 255):
        lines = segment.read_shard(shard).splitlines()
        assert lines and all(int(line[:2], 16) == shard for line in lines)
        assert [fingerprint_key(line[:32]) for line in lines] == list(segment.shard_keys(shard))
        seen += len(lines)
    assert 0 < seen < 3_000  # only the shards asked for were read


def test_hits_resolve_one_shard_at_a_time_to_rows_with_zero_usage_and_their_source(tmp_path: Path) -> None:
    store = as_path(str(tmp_path / "store"))
    old, new = _fingerprints(500, "old"), _fingerprints(500, "new")
    now = time.time()
    _segment(store, "batch-old", {fp: f"old {i}" for i, fp in enumerate(old)}, now - 3_600)
    _segment(store, "batch-new", {fp: f"new {i}" for i, fp in enumerate(new)} | {old[0]: "newer"}, now - 60)
    index = load_index(store)
    assert index.answers == 1_001 and [s.name for s in index.segments] == ["batch-new", "batch-old"]
    assert all(index.has(fingerprint_key(fp)) for fp in old + new)
    assert not any(index.has(fingerprint_key(fp)) for fp in _fingerprints(200, "never"))

    hits = HitSpill()
    try:
        for i, fp in enumerate([old[0], old[1], new[2]]):
            hits.add(fingerprint_key(fp), fp, b'{"custom_id":"c%d","row":%d}' % (i, i + 1), b"{}")
        hits.add(fingerprint_key(old[1]), old[1], b'{"custom_id":"twin","row":9,"input":{"k":1}}', b"{}")
        out = io.BytesIO()
        assert _resolve(index, hits, out) == (4, [])
    finally:
        hits.close()
    rows = {row["custom_id"]: row for row in map(msgspec.json.decode, out.getvalue().splitlines())}
    assert rows["c0"]["text"] == "newer" and rows["c0"]["reused_from"]["batch_id"] == "batch-new"
    assert rows["c1"]["text"] == rows["twin"]["text"] == "old 1" and rows["twin"]["input"] == {"k": 1}
    assert rows["c2"]["text"] == "new 2" and rows["c2"]["row"] == 3
    assert all(row["usage"]["output_tokens"] == 0 and row["batch_id"] is None for row in rows.values())
    assert rows["c1"]["reused_from"]["usage"] == {"output_tokens": 3}


def test_max_age_leaves_out_segments_written_before_it(tmp_path: Path) -> None:
    store = as_path(str(tmp_path / "store"))
    old, new = _fingerprints(50, "old"), _fingerprints(50, "new")
    now = time.time()
    _segment(store, "batch-old", dict.fromkeys(old, "old"), now - 7_200)
    _segment(store, "batch-new", dict.fromkeys(new, "new"), now - 60)
    young = load_index(store, max_age=3_600, now=now)
    assert [s.name for s in young.segments] == ["batch-new"]
    assert not any(young.has(fingerprint_key(fp)) for fp in old)
    assert all(young.has(fingerprint_key(fp)) for fp in new)
    assert load_index(store, now=now).answers == 100
    assert load_index(as_path(str(tmp_path / "nothing-yet"))).answers == 0


def test_a_hit_whose_segment_vanished_is_sent_instead_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = as_path(str(tmp_path / "store"))
    fingerprints = _fingerprints(10)
    _segment(store, "batch-1", dict.fromkeys(fingerprints, "x"), time.time())
    index = load_index(store)
    answers = layout.answer_segment_paths(store, "batch-1")[0]
    answers.unlink()
    hits = HitSpill()
    try:
        hits.add(fingerprint_key(fingerprints[0]), fingerprints[0], b'{"custom_id":"a","row":1}', b'{"x":1}')
        out = io.BytesIO()
        assert _resolve(index, hits, out) == (0, [fingerprints[0] + b'{"custom_id":"a","row":1}\t{"x":1}'])
    finally:
        hits.close()
    assert out.getvalue() == b""
    assert "batch-1.answers" in caplog.text and "sent instead" in caplog.text


def test_a_pass_with_reuse_keeps_answered_requests_out_of_the_chunks_but_not_out_of_its_fingerprint(
    tmp_path: Path,
) -> None:
    store = as_path(str(tmp_path / "store"))
    requests = [{"custom_id": f"r{i}", "params": {**PARAMS, "max_tokens": 10 + i}} for i in range(6)]
    known = {Fingerprints().of(_typed(r["params"])): f"answer {r['custom_id']}" for r in requests[::2]}
    _segment(store, "batch-earlier", known, time.time())

    def prepare(index: Any, name: str) -> Any:
        routing = Routing(job="job", round_number=0, index=index)
        try:
            prepared = prepare_chunks(
                requests, staging=as_path(str(tmp_path / name)), max_requests=2, max_bytes=100_000,
                diversion=routing,
            )  # fmt: skip
        finally:
            routing.close()
        return prepared, routing

    reused, routing = prepare(load_index(store), "reused")
    plain, _ = prepare(None, "plain")
    assert routing.reused == 3 and reused.requests == 3 and plain.requests == 6
    assert reused.fingerprint == plain.fingerprint  # the input, whatever the store answered
    assert reused.tally.models["claude-haiku-4-5"].requests == 3
    rows = [msgspec.json.decode(x) for x in (reused.staging / layout.REUSED_FILE).read_bytes().splitlines()]
    assert sorted((row["custom_id"], row["text"]) for row in rows) == [
        ("r0", "answer r0"), ("r2", "answer r2"), ("r4", "answer r4"),
    ]  # fmt: skip


# ---- the store trusted as a stranger (issue 23, classes 3 and 4) ------------------------------

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"label": {"enum": ["good", "bad"]}},
    "required": ["label"],
}


def _answer(text: str, **more: Any) -> bytes:
    return msgspec.json.encode({"model": "m", "stop_reason": "end_turn", "text": text, **more})


def test_a_stored_answer_is_judged_as_a_fresh_one_and_its_output_derived_again() -> None:
    from airflow_batch.rules.schema import recorded_validator

    with_schema = ReuseCheck(recorded_validator(SCHEMA))
    used = with_schema(_answer('{"label": "good"}', output={"label": "bad"}))
    assert isinstance(used, bytes) and msgspec.json.decode(used)["output"] == {"label": "good"}
    assert "not valid for this job's output schema" in str(with_schema(_answer('{"label": "meh"}')))
    assert "not valid" in str(with_schema(_answer("plain words")))  # stored by a job without a schema
    refusal = _answer('{"label": "good"}') .replace(b"end_turn", b"refusal")  # fmt: skip
    assert "refused answer" in str(with_schema(refusal))
    assert "damaged" in str(with_schema(b'{"model":"m","stop_reason":"end_turn","text":"unterminated'))
    assert "damaged" in str(with_schema(b'{"model":"m","text":7}'))
    plain = ReuseCheck()
    assert "output" not in msgspec.json.decode(plain(_answer("hi", output={"label": "good"})))  # type: ignore[arg-type]
    content = [{"type": "text", "text": "hi"}]
    assert "no content blocks" in str(ReuseCheck(include_content=True)(_answer("hi")))
    kept = ReuseCheck(include_content=True)(_answer("hi", content=content))
    assert msgspec.json.decode(kept)["content"] == content  # type: ignore[arg-type]
    assert "content" not in msgspec.json.decode(plain(_answer("hi", content=content)))  # type: ignore[arg-type]


def test_the_scope_of_an_answer_is_its_endpoint_workspace_and_full_schema() -> None:
    from airflow_batch.reuse.fingerprint import answer_scope

    params = _typed(PARAMS)
    base = Fingerprints(scope=answer_scope("https://api.anthropic.com", None, SCHEMA)).of(params)
    looser = {**SCHEMA, "properties": {"label": {"enum": ["good", "bad"], "maxLength": 4}}}
    for scope in (
        answer_scope("http://127.0.0.1:8080", None, SCHEMA),
        answer_scope("https://api.anthropic.com", "wrkspc_1", SCHEMA),
        answer_scope("https://api.anthropic.com", None, looser),
        answer_scope("https://api.anthropic.com", None, None),
    ):
        assert Fingerprints(scope=scope).of(params) != base
    reordered = dict(reversed(list(SCHEMA.items())))
    assert Fingerprints(scope=answer_scope("https://api.anthropic.com/", None, reordered)).of(params) == base


def test_an_answer_refused_in_the_newest_segment_is_taken_from_an_older_sound_one(tmp_path: Path) -> None:
    from airflow_batch.rules.schema import recorded_validator

    store = as_path(str(tmp_path / "store"))
    fingerprints = _fingerprints(20)
    now = time.time()
    _segment(store, "batch-old", dict.fromkeys(fingerprints, '{"label": "good"}'), now - 60)
    _segment(store, "batch-new", dict.fromkeys(fingerprints[:10], '{"label": "meh"}'), now)
    hits = HitSpill()
    try:
        for i, fp in enumerate(fingerprints):
            hits.add(fingerprint_key(fp), fp, b'{"custom_id":"c%d","row":%d}' % (i, i + 1), b"{}")
        out = io.BytesIO()
        assert _resolve(load_index(store), hits, out, ReuseCheck(recorded_validator(SCHEMA))) == (20, [])
    finally:
        hits.close()
    rows = [msgspec.json.decode(line) for line in out.getvalue().splitlines()]
    assert {row["reused_from"]["batch_id"] for row in rows} == {"batch-old"}
    assert all(row["output"] == {"label": "good"} for row in rows)


def test_an_unreadable_keys_file_or_a_segment_from_the_future_is_skipped_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = as_path(str(tmp_path / "store"))
    now = time.time()
    for name, written_at in (
        ("batch-ok", now),
        ("batch-cut", now),
        ("batch-bent", now),
        ("batch-later", now + 86_400),
    ):
        _segment(store, name, dict.fromkeys(_fingerprints(5, name), "x"), written_at)
    cut = layout.answer_segment_paths(store, "batch-cut")[1]
    cut.write_bytes(cut.read_bytes()[:-7])
    bent = layout.answer_segment_paths(store, "batch-bent")[1]
    data = bytearray(bent.read_bytes())
    data[20] ^= 0xFF  # a bit of the header: the digest no longer matches
    bent.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        index = load_index(store, now=now)
    assert [segment.name for segment in index.segments] == ["batch-ok"]
    for name in ("batch-cut.keys", "batch-bent.keys", "batch-later.keys"):
        assert name in caplog.text
    assert "in the future" in caplog.text and "does not match its checksum" in caplog.text


def test_a_routing_sends_what_the_store_cannot_answer_and_counts_it_in_the_estimate(tmp_path: Path) -> None:
    from airflow_batch.rules.schema import recorded_validator

    store = as_path(str(tmp_path / "store"))
    requests = [{"custom_id": f"r{i}", "params": {**PARAMS, "max_tokens": 10 + i}} for i in range(4)]
    known = {Fingerprints().of(_typed(r["params"])): '{"label": "meh"}' for r in requests}
    _segment(store, "batch-invalid", known, time.time())
    routing = Routing(
        job="job", round_number=0, index=load_index(store), check=ReuseCheck(recorded_validator(SCHEMA))
    )
    try:
        prepared = prepare_chunks(
            requests, staging=as_path(str(tmp_path / "staging")), max_requests=10, max_bytes=100_000,
            diversion=routing,
        )  # fmt: skip
    finally:
        routing.close()
    assert routing.reused == 0 and prepared.requests == 4
    assert prepared.tally.models["claude-haiku-4-5"].requests == 4
    twins = (prepared.staging / "inputs" / "chunk-00000.jsonl").read_bytes().splitlines()
    assert sorted(msgspec.json.decode(twin)["fingerprint"] for twin in twins) == sorted(
        fp.decode() for fp in known
    )
