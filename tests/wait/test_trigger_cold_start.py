"""A fresh triggerer's first trigger: nothing heavy on its event loop, no full collection from the SDK."""

from __future__ import annotations

import json
import subprocess
import sys

# What a triggerer does with our classpath, then what the trigger's first run does in a thread.
_COLD_TRIGGERER = """
import gc, json, sys, threading
import airflow.triggers.base
import airflow_batch.triggers.batches  # the triggerer imports the classpath on its event loop

heavy = sorted(m for m in ("anthropic", "airflow_batch.hooks.batches") if m in sys.modules)
full_collections = []


def record(phase, info):
    if phase == "stop" and info["generation"] == 2:
        full_collections.append(1)


gc.callbacks.append(record)

from airflow_batch.wait.loop import FIRST_REQUEST_IMPORTS, HOOK_MODULE, import_without_collections

thread = threading.Thread(target=import_without_collections, args=(HOOK_MODULE, *FIRST_REQUEST_IMPORTS))
thread.start()
thread.join()
print(json.dumps({
    "heavy_at_trigger_import": heavy,
    "sdk_imported": "anthropic" in sys.modules,
    "warm_ups_missing": [m for m in FIRST_REQUEST_IMPORTS if m not in sys.modules],
    "full_collections": len(full_collections),
    "gc_enabled": gc.isenabled(),
    "frozen": gc.get_freeze_count(),
}))
"""


def test_trigger_module_is_light_and_the_sdk_import_sets_off_no_full_collection() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _COLD_TRIGGERER], capture_output=True, text=True, timeout=180
    )

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy_at_trigger_import"] == [], "the trigger module must not import the SDK or the hook"
    assert report["sdk_imported"]
    assert report["warm_ups_missing"] == [], "what the SDK's first request imports is imported here"
    # A full collection holds the GIL for 100-250 ms: the triggerer's loop would stall meanwhile.
    assert report["full_collections"] == 0
    assert report["gc_enabled"], "the collector is running again after the import"
    assert report["frozen"] > 100_000, "the import's objects are out of the collector's view"
