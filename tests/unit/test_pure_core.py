"""The stages' pure cores import no Airflow: they plan, validate, classify, price and parse plain data."""

from __future__ import annotations

import subprocess
import sys

PURE_MODULES = [
    "airflow_batch.rules.costs",
    "airflow_batch.layout",
    "airflow_batch.manifest",
    "airflow_batch.rules.tokens",
    "airflow_batch.submit.chunking",
    "airflow_batch.submit.chunk_files",
    "airflow_batch.submit.shared_prompts",
    "airflow_batch.submit.estimate",
    "airflow_batch.submit.records",
    "airflow_batch.submit.validation",
    "airflow_batch.wait.events",
    "airflow_batch.wait.policy",
    "airflow_batch.wait.progress",
    "airflow_batch.rows.gathered",
    "airflow_batch.rows.contract",
    "airflow_batch.rows.lines",
    "airflow_batch.rows.failures",
    "airflow_batch.reuse.fingerprint",
    "airflow_batch.plugins.views",
    "airflow_batch.plugins.manifests",
    "airflow_batch.plugins.details",
    "airflow_batch.plugins.display",
    "airflow_batch.plugins.charts",
    "airflow_batch.plugins.job_view",
    "airflow_batch.lineage.figures",
    "airflow_batch.metrics",
]

# Any attempt to import Airflow fails loudly, so a pure module that needs it cannot load.
_NO_AIRFLOW = """
import importlib, sys

class NoAirflow:
    def find_spec(self, name, path=None, target=None):
        if name == "airflow" or name.startswith("airflow."):
            raise ImportError(f"pure core imported {name}")
        return None

sys.meta_path.insert(0, NoAirflow())
for module in sys.argv[1:]:
    importlib.import_module(module)
print(sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow.")))
"""


def test_pure_core_modules_import_without_airflow() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _NO_AIRFLOW, *PURE_MODULES], capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
