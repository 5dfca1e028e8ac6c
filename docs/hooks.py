"""mkdocs hooks: publish the lineage facet schema where its ``_schemaURL`` points.

``airflow_batch.lineage.figures`` stamps every ``airflow_batch`` run facet with
``{site_url}spec/facets/1-0-0/AirflowBatchRunFacet.json``; the schema's one home is
``docs/lineage/AirflowBatchRunFacet.json`` (served at ``lineage/`` too, and read by the tests),
so the build copies it to the versioned path instead of keeping a second file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

FACET_SCHEMA = Path("lineage/AirflowBatchRunFacet.json")
SCHEMA_URL_PATH = Path("spec/facets/1-0-0/AirflowBatchRunFacet.json")


def on_post_build(config: Any, **kwargs: Any) -> None:
    target = Path(config["site_dir"]) / SCHEMA_URL_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(config["docs_dir"]) / FACET_SCHEMA, target)
