"""The job identity is one type: serialized by one function into every trigger, and back."""

from __future__ import annotations

import json

from airflow_batch.manifest import JobIdentity
from airflow_batch.submit.queue import QueueWait
from airflow_batch.triggers.batches import BatchesTrigger
from airflow_batch.triggers.queue import QueueRoomTrigger

IDENTITY = JobIdentity("anthropic_default", ("files-api-2025-04-14",), "wrkspc_1")


def test_an_identity_round_trips_through_json_with_names_only() -> None:
    document = json.loads(json.dumps(IDENTITY.to_json()))
    assert document == {
        "conn_id": "anthropic_default",
        "betas": ["files-api-2025-04-14"],
        "workspace_id": "wrkspc_1",
    }
    assert JobIdentity.from_json(document) == IDENTITY
    assert JobIdentity.from_json({"conn_id": "c"}) == JobIdentity("c")


def test_both_triggers_carry_the_identity_as_it_serializes_and_restore_it() -> None:
    wait = QueueWait("max_queued_requests", need=1, queued=1, limit=1, retry_after=None, pending_chunks=1)
    triggers = [
        BatchesTrigger(identity=IDENTITY.to_json(), batch_ids=["msgbatch_a"], end_time=1e10, job_dir="/j"),
        QueueRoomTrigger(
            identity=IDENTITY.to_json(), batch_ids=["msgbatch_a"], wait=wait.to_json(), started_at=0.0
        ),
    ]
    for trigger in triggers:
        _, kwargs = trigger.serialize()
        kwargs = json.loads(json.dumps(kwargs))  # what the metadata DB keeps
        assert kwargs["identity"] == IDENTITY.to_json()
        assert not {"conn_id", "betas", "workspace_id"} & kwargs.keys(), (
            "the identity is not spelled out twice"
        )
        restored = type(trigger)(**kwargs)
        assert restored.identity == IDENTITY and restored.serialize() == trigger.serialize()


def test_the_hook_is_built_from_the_identity() -> None:
    hook = IDENTITY.hook()
    assert hook.conn_id == "anthropic_default"
    assert list(hook.betas) == ["files-api-2025-04-14"] and hook.workspace_id == "wrkspc_1"
