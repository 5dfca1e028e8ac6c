"""From ``pip install`` alone: the wheel, installed into a fresh virtual environment (no clone on
its path, run from an empty folder), runs the demo and ``airflow-batch dev`` on the example DAGs
it ships.

Dependencies are pinned to ``uv.lock`` (exported as constraints) so the environment is the one
the suite tests; the wheel itself is installed as a user would, ``airflow-batch[parquet]``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from airflow_cluster import free_port

REPO = Path(__file__).resolve().parents[2]
UV = [shutil.which("uv")] if shutil.which("uv") else [sys.executable, "-m", "uv"]

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(900)]


def _run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result  # type: ignore[no-any-return]


def _clean_env(home: Path) -> dict[str, str]:
    # Nothing of the clone or of the caller's Airflow: no PYTHONPATH, no AIRFLOW_* variables.
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def test_the_wheel_alone_runs_the_demo_and_dev_on_the_example_dags_it_ships(tmp_path: Path) -> None:
    dist, venv, run = tmp_path / "dist", tmp_path / "venv", tmp_path / "run"
    run.mkdir()
    _run([*UV, "build", "--wheel", "-q", "-o", str(dist), str(REPO)])
    [wheel] = dist.glob("airflow_batch-*.whl")
    constraints = tmp_path / "constraints.txt"
    _run(
        [
            *UV,
            "export",
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--no-emit-project",
            "-q",
            "-o",
            str(constraints),
        ],
        cwd=REPO,
    )
    _run([*UV, "venv", "-q", "--python", sys.executable, str(venv)])
    _run([*UV, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-c", str(constraints),
          f"{wheel}[parquet]"])  # fmt: skip

    installed = _run(
        [str(venv / "bin" / "python"), "-c", "import airflow_batch; print(airflow_batch.__file__)"],
        cwd=run,
        env=_clean_env(tmp_path),
    ).stdout
    assert str(venv) in installed and str(REPO) not in installed

    workdir = run / "w"
    demo = _run(
        [str(venv / "bin" / "python"), "-m", "airflow_batch.dev.demo", "--workdir", str(workdir)],
        cwd=run,
        env=_clean_env(tmp_path),
    )
    assert "first rows of results.parquet" in demo.stdout, demo.stdout[-3000:]

    # dev on the same workdir: the demo migrated its database, so this start is quick.
    printed = tmp_path / "dev.out"
    command = [
        str(venv / "bin" / "airflow-batch"),
        "dev",
        "--workdir",
        str(workdir),
        "--port",
        str(free_port()),
    ]
    with printed.open("wb") as out:
        dev = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=run, env=_clean_env(tmp_path)
        )
    try:
        deadline = time.monotonic() + 300
        while "Ctrl-C stops everything." not in printed.read_text(errors="replace"):
            assert dev.poll() is None, printed.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, printed.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        text = printed.read_text(errors="replace")
        assert "site-packages/airflow_batch/example_dags" in text  # the DAGs the wheel ships
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGINT)
            dev.wait(timeout=120)
    assert dev.returncode == 0, printed.read_text(errors="replace")[-3000:]
    assert "no process left running" in printed.read_text(errors="replace")
