"""Running the emulator: durability across restarts, the shared fixtures, and the command line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx
import pytest
from emulator_helpers import request, tokens, wait_ended

from airflow_batch.emulator.process import EmulatorProcess


def test_restarted_emulator_keeps_batches_and_resumes_processing(
    emulator: EmulatorProcess, sync_client: anthropic.Anthropic
) -> None:
    shared = "Shared instructions. " * 800  # above Haiku 4.5's minimum cacheable length
    system = [{"type": "text", "text": shared, "cache_control": {"type": "ephemeral"}}]
    done = sync_client.messages.batches.create(requests=[request("w", system=system)])
    wait_ended(sync_client, done.id)
    emulator.configure(throughput=5)
    running = sync_client.messages.batches.create(requests=[request(f"r{i}") for i in range(60)])

    emulator.restart()

    assert sync_client.messages.batches.retrieve(running.id).processing_status == "in_progress"
    emulator.configure(throughput=1_000_000_000)
    ended = wait_ended(sync_client, running.id)
    assert ended.request_counts.succeeded == 60
    assert [b.id for b in sync_client.messages.batches.list()] == [running.id, done.id]
    assert len(list(sync_client.messages.batches.results(done.id))) == 1
    again = sync_client.messages.batches.create(requests=[request("r", system=system)])
    wait_ended(sync_client, again.id)
    usage = next(iter(sync_client.messages.batches.results(again.id))).result.message.usage  # type: ignore[union-attr]
    assert usage.cache_read_input_tokens == tokens(shared)
    assert emulator.batch_count() == 3


async def test_async_client_fixture_talks_to_the_emulator(
    emulator: EmulatorProcess, async_client: anthropic.AsyncAnthropic
) -> None:
    batch = await async_client.messages.batches.create(requests=[request("a")])

    assert (await async_client.messages.batches.retrieve(batch.id)).id == batch.id
    assert emulator.batch_count() == 1
    emulator.reset()
    assert emulator.batch_count() == 0


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("airflow-batch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "airflow_batch.cli"]


@pytest.mark.parametrize("command", [_console_script(), [sys.executable, "-m", "airflow_batch.emulator"]])
def test_command_line_prints_real_port_takes_env_settings_and_stops_on_sigterm(
    tmp_path: Path, command: list[str]
) -> None:
    if command[0].endswith("airflow-batch") or command[-1] == "airflow_batch.cli":
        command = [*command, "emulator"]
    env = {**os.environ, "AIRFLOW_BATCH_EMULATOR_ERROR_RATE": "0.25"}
    process = subprocess.Popen(
        [*command, "--port", "0", "--data", str(tmp_path), "--http-fault-statuses", "429,drop"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"airflow-batch emulator listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match and int(match[2]) > 0, line
        config = httpx.get(f"{match[1]}/_emulator/config").json()
        assert config["error_rate"] == 0.25
        assert config["http_fault_statuses"] == [429, "drop"]
        assert httpx.get(f"{match[1]}/_emulator/health").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_bad_setting_on_the_command_line_fails_fast(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow_batch.emulator", "--data", str(tmp_path), "--error-rate", "7"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "error_rate" in result.stderr


def test_emulator_process_context_manager_stops_the_server(tmp_path: Path) -> None:
    with EmulatorProcess(tmp_path / "data") as process:
        base_url = process.base_url
        assert httpx.get(f"{base_url}/_emulator/health").status_code == 200
    with pytest.raises(httpx.ConnectError):  # nothing listens on the port any more
        httpx.get(f"{base_url}/_emulator/health", timeout=10)


def test_emulator_server_imports_neither_airflow_nor_client_libraries() -> None:
    code = (
        "import sys, airflow_batch.emulator.server; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'fastapi', 'pydantic', 'httpx'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    assert result.stdout.strip() == "[]"
