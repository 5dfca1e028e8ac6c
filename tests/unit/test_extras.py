"""The optional extras: what each installs works, and the package needs none of them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
EXTRAS = {
    name: [Requirement(spec) for spec in specs]
    for name, specs in PYPROJECT["project"]["optional-dependencies"].items()
}

# A fresh interpreter where every library the extras bring fails to import, as on a plain install
# (the providers' own packages stay importable: Airflow reads their metadata at start-up).
WITHOUT_EXTRAS = """
import importlib.abc, sys
BLOCKED = ("boto3", "botocore", "aiobotocore", "s3fs", "gcsfs", "celery", "kombu", "redis",
           "psycopg2", "openlineage")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{name} is not installed")
        return None

sys.meta_path.insert(0, Block())
import airflow_batch
from airflow_batch import anthropic_batch_job
from airflow_batch.storage import as_path, atomic_writer, iter_jsonl
target = as_path(sys.argv[1]) / "rows.jsonl"
with atomic_writer(target) as handle:
    handle.write(b'{"custom_id": "a"}\\n{"custom_id": "b"}\\n')
print(sorted(row["custom_id"] for row in iter_jsonl(target)))
"""


def test_the_package_imports_and_reads_local_files_without_any_extra(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['a', 'b']"


def test_the_amazon_extra_brings_s3fs_for_object_storage() -> None:
    (provider,) = (r for r in EXTRAS["amazon"] if r.name == "apache-airflow-providers-amazon")
    assert "s3fs" in provider.extras

    from airflow.providers.amazon.aws.fs.s3 import get_fs

    assert callable(get_fs)
    import s3fs

    assert Version(s3fs.__version__)


def test_the_celery_extra_excludes_the_celery_that_breaks_the_provider() -> None:
    celery = next(r for r in EXTRAS["celery"] if r.name == "celery")

    assert "redis" in celery.extras
    assert not celery.specifier.contains("5.7.0")  # providers-celery 3.26.0 fails to import with it
    assert celery.specifier.contains(version("celery"))


def test_the_celery_executor_imports_with_the_pinned_celery() -> None:
    from airflow.providers.celery.executors.celery_executor import CeleryExecutor

    assert CeleryExecutor.__name__ == "CeleryExecutor"
