"""A moto S3 server in this process (a thread on a free loopback port) for tests that read s3:// inputs."""

from __future__ import annotations

import atexit
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

#: Dummy credentials: moto accepts any. Never a real key.
KEY_ID = SECRET = "testing"


_ENDPOINT: list[str] = []


def moto_endpoint() -> str:
    """Return the endpoint URL of this process's one moto server, started on first use.

    One server for the whole session: Airflow and fsspec cache an ``s3://aws_default@...``
    filesystem with the endpoint it was first built with, so a second server on another port
    would be unreachable through it.
    """
    if not _ENDPOINT:
        from moto.server import ThreadedMotoServer

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        atexit.register(server.stop)
        _ENDPOINT.append(f"http://127.0.0.1:{port}")
    return _ENDPOINT[0]


@contextmanager
def bucket_behind_connection(endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Create ``bucket`` behind the ``aws_default`` connection; yield a boto3 client; empty it after."""
    import boto3

    connection = {
        "conn_type": "aws",
        "login": KEY_ID,
        "password": SECRET,
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )  # fmt: skip
    client.create_bucket(Bucket=bucket)
    try:
        yield client
    finally:
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)
