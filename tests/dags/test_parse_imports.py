"""Parsing the example DAGs does not load the Anthropic SDK: it is imported only when a task runs."""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

DAGS = Path(__file__).resolve().parents[2] / "dags"

# Run in a fresh interpreter: the test process has long imported the SDK (conftest, fixtures).
NOT_AT_PARSE = ("anthropic", "airflow.providers.anthropic.hooks.anthropic")
PARSE = f"""
import importlib, json, sys, time
sys.path.insert(0, sys.argv[1])
started = time.perf_counter()
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps({{
    "seconds": time.perf_counter() - started,
    "loaded": [m for m in {NOT_AT_PARSE!r} if m in sys.modules],
}}))
"""


def dag_modules() -> list[str]:
    """Return the module names of the DAG files, leaving out what ``.airflowignore`` ignores."""
    lines = (line.strip() for line in (DAGS / ".airflowignore").read_text().splitlines())
    patterns = [line for line in lines if line and not line.startswith("#")]
    return sorted(
        path.stem for path in DAGS.glob("*.py") if not any(fnmatch.fnmatch(path.name, p) for p in patterns)
    )


def test_parsing_the_example_dags_does_not_import_the_anthropic_sdk(tmp_path: Path) -> None:
    modules = dag_modules()
    assert modules and "batch_examples" not in modules
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
    }
    result = subprocess.run(
        [sys.executable, "-c", PARSE, str(DAGS), *modules],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"importing {', '.join(modules)} took {report['seconds']:.2f}s")
    assert report["loaded"] == []


def test_the_submit_operator_defaults_to_the_hooks_default_connection() -> None:
    # The default is spelled out so that defining the operator does not import the hook.
    from airflow.providers.anthropic.hooks.anthropic import AnthropicHook

    from airflow_batch.job import anthropic_batch_job
    from airflow_batch.operators.submit import SubmitBatchesOperator

    for func in (SubmitBatchesOperator.__init__, anthropic_batch_job):
        assert inspect.signature(func).parameters["conn_id"].default == AnthropicHook.default_conn_name
