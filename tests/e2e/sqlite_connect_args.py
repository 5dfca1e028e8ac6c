"""SQLite connect arguments for the test cluster (``[database] sql_alchemy_connect_args``).

Four Airflow processes and the CLI share one SQLite file; a writer waits up to 60 s for the
lock instead of SQLite's default 5 s, which a loaded 2-core machine can exceed.
"""

CONNECT_ARGS = {"timeout": 60}
