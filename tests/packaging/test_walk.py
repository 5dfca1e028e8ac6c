"""The walk of one request from the factory to a Parquet row: no climb back, and no longer than it is.

One inline request through ``anthropic_batch_job`` and ``dag.test()`` against the emulator,
traced by :class:`~airflow_batch.dev.walk.RequestWalk` (the definitions of a hop and a climb
back are in :mod:`airflow_batch.dev.walk`; ``bench/walk.py`` prints the same walk).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from airflow_test_env import run_dag

from airflow_batch import layout
from airflow_batch.dev.walk import WALK_CUSTOM_ID, RequestWalk, layer_of, short_name, traced_job
from airflow_batch.emulator.process import EmulatorProcess

MAX_HOPS = 25
"""The request's own walk: 27 modules when the tool was written, 25 after the folds of issue 24
(``submit/required`` into ``submit/inputs``, ``submit/unique_ids`` into ``submit/validation``)."""

MAX_HOPS_WITH_BATCH = 49
"""The walk with its batch (the wait, the links, the metrics added): 47 before, 45 after the folds,
49 after the splits of the modules over 500 lines (a split module is two hops: ``JobFolder`` is
one class in ``folder``, ``round_files`` and ``part_files`` over ``job_files``; a chunk's create is
``submit/chunk_batch`` apart from the waves of ``submit/creating``)."""


@pytest.mark.usefixtures("airflow_db")
def test_one_request_walks_to_its_parquet_row_without_climbing_back(
    emulator: EmulatorProcess, anthropic_conn: str, tmp_path: Path
) -> None:
    output = str(tmp_path / "out")
    tracer, dag, run = traced_job(emulator, output, anthropic_conn, run_dag)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    job = layout.job_dir(output, dag.dag_id, run.run_id, "walk.submit")
    rows = pq.read_table(str(job / "results.parquet")).to_pylist()
    assert [row["custom_id"] for row in rows] == [WALK_CUSTOM_ID]  # the walk reached its row

    walk, with_batch = tracer.request, tracer.with_batch
    shown = "\n".join([*walk.lines(), "with its batch:", *with_batch.lines()])
    # From the factory to the Parquet writer, through the API seam (the request's bytes).
    assert short_name(walk.modules[0]) == "job", shown
    assert {"api/batches", "submit/validation", "gather/tables"} <= {short_name(m) for m in walk.modules}, (
        shown
    )
    # The wait sees only the batch: on the walk with its batch, not on the request's own.
    assert "triggers/batches" in {short_name(m) for m in with_batch.modules}, shown
    assert not {m for m in walk.modules if short_name(m).startswith(("wait/", "triggers/"))}, shown
    assert not walk.climbs, shown
    assert not with_batch.climbs, shown
    assert walk.hops <= MAX_HOPS, shown
    assert with_batch.hops <= MAX_HOPS_WITH_BATCH, shown


@pytest.fixture
def probe_modules(tmp_path: Path) -> Iterator[dict[str, object]]:
    """Three modules in the package's layers: an operator, an API module importing it, and a rules
    module handed a function (no module of the package has a climb back to trace)."""
    sources = {
        "airflow_batch.operators.walk_probe": "def higher(data):\n    return data\n",
        "airflow_batch.api.walk_probe": (
            "from airflow_batch.operators import walk_probe\n\n"
            "def lower(data):\n    return walk_probe.higher(data)\n"
        ),
        "airflow_batch.rules.walk_probe": "def apply(function, data):\n    return function(data)\n",
    }
    modules: dict[str, object] = {}
    for name, source in sources.items():
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        modules[name] = module
    yield modules
    for name in sources:
        sys.modules.pop(name, None)


def test_a_lower_module_calling_a_higher_one_it_imports_is_a_climb_back_and_a_callback_is_not(
    probe_modules: dict[str, object],
) -> None:
    api: Any = probe_modules["airflow_batch.api.walk_probe"]
    rules: Any = probe_modules["airflow_batch.rules.walk_probe"]
    shell: Any = probe_modules["airflow_batch.operators.walk_probe"]
    with RequestWalk("probe-request") as tracer:
        api.lower({"custom_id": "probe-request"})
        rules.apply(shell.higher, ["probe-request"])
        api.lower({"custom_id": "another request"})  # not the request's data: not on the walk
    walk = tracer.request
    assert [short_name(m) for m in walk.modules] == [
        "api/walk_probe",
        "operators/walk_probe",
        "rules/walk_probe",
    ]
    assert [(str(a), str(b)) for a, b in walk.climbs] == [
        ("api/walk_probe:lower", "operators/walk_probe:higher")
    ]
    assert [(str(a), str(b)) for a, b in walk.callbacks] == [
        ("rules/walk_probe:apply", "operators/walk_probe:higher")
    ]


def test_a_module_outside_every_layer_is_named() -> None:
    assert layer_of("airflow_batch.api.batches") < layer_of("airflow_batch.submit.round")
    assert layer_of("airflow_batch.submit.round") < layer_of("airflow_batch.operators.submit")
    with pytest.raises(ValueError, match=r"'airflow_batch\.nowhere' is in no layer"):
        layer_of("airflow_batch.nowhere")
