"""One of Airflow's log servers, bound to the loopback interface: ``python -m airflow_batch.dev.log_server``.

``airflow scheduler`` and ``airflow triggerer`` start Airflow's log server on every interface
(``serve_logs`` binds ``""``) and on the fixed ports of ``[logging] worker_log_server_port`` and
``trigger_log_server_port``: task logs reachable from the network, and a second deployment on
the same host failing to bind. ``airflow-batch dev`` starts both components with
``--skip-serve-logs`` and runs the same app (``airflow.utils.serve_logs.log_server``) here on
``127.0.0.1`` and a free port it chose; the api-server finds it through the deployment's
environment (the port, and a host name that is the loopback address).
"""

from __future__ import annotations

import argparse

LOOPBACK = "127.0.0.1"


def main() -> None:
    """Serve task logs on ``127.0.0.1:--port`` until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    import uvicorn

    uvicorn.run(
        "airflow.utils.serve_logs.log_server:get_app",
        factory=True,
        host=LOOPBACK,
        port=port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
