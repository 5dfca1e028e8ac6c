"""Run every benchmark in turn (``make bench``); each prints its own figures and ratios.

Not included, for their length: ``bench_10m.py`` (ten million requests on a real Airflow,
about half an hour), ``reuse_savings.py`` (dollar figures of the example jobs) and
``bench_documents.py`` (20,000 files through the Files API, about a quarter of an hour).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = [
    "bench_emulator.py",
    "bench_submit.py",
    "bench_reuse.py",
    "bench_wait.py",
    "bench_gather.py",
    "bench_gather_schema.py",
    "bench_s3_read.py",
    "bench_cache_ttl.py",
]


def main() -> int:
    here = Path(__file__).parent
    failed = []
    for name in BENCHMARKS:
        print(f"\n=== {name}", flush=True)
        if subprocess.call([sys.executable, str(here / name)]) != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
