"""Command-line flags of the emulator and the uvicorn server that runs it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvicorn

from airflow_batch.emulator.app import create_app
from airflow_batch.emulator.faults import ConfigError, EmulatorConfig, config_from_env, config_names

DEFAULT_DATA_DIR = ".airflow-batch-emulator"

_FLAG_HELP = {
    "throughput": "requests processed per second per batch (0 pauses processing)",
    "latency_ms": "milliseconds added to every API call",
    "start_delay_seconds": "seconds from creation to the first completed request",
    "cancel_delay_seconds": "seconds a canceled batch stays 'canceling'",
    "ttl_seconds": "seconds after which an unfinished batch ends with the rest expired",
    "error_rate": "fraction of requests that come back errored",
    "error_types": "error types for --error-rate (a,b), or type=rate pairs (overloaded_error=0.05,...)",
    "expire_rate": "fraction of requests that come back expired",
    "http_fault_rate": "probability that an API call fails with one of --http-fault-statuses",
    "http_fault_statuses": "statuses to inject, e.g. 429,529,500,drop,lost (drop cuts a results stream; lost "
    "stores a create then cuts its response)",
    "http_fault_budget": "inject at most this many HTTP faults",
    "retry_after_seconds": "retry-after sent with injected 429s",
    "batch_http_faults": "JSON object: batch id -> HTTP status for every call naming that batch",
    "seed": "seed of every random choice",
    "max_requests": "most requests in one batch",
    "max_body_bytes": "largest create body accepted",
    "refusal_rate": "fraction of answers that are refusals (stop_reason refusal)",
    "pause_turn_rate": "fraction of answers with web search/fetch tools that pause (stop_reason pause_turn)",
    "invalid_output_rate": "fraction of structured-output answers that break their schema or are not JSON",
    "queue_limit": "most requests in unended batches at once (the organisation's processing queue)",
    "create_rate_per_minute": "most batch creates accepted per rolling minute",
    "spend_limit_reached": "true: answer every create with the spend-limit 429 "
    "(error_code enforced_spend_limit_reached)",
}


def add_emulator_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--host --port --data --config`` and one flag per setting to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on; 0 picks a free port")
    parser.add_argument(
        "--data",
        default=os.environ.get("AIRFLOW_BATCH_EMULATOR_DATA", DEFAULT_DATA_DIR),
        help=f"directory of the durable store (default {DEFAULT_DATA_DIR})",
    )
    parser.add_argument("--config", default=None, help="JSON object of settings (flags override it)")
    for name in config_names():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            help=f"{_FLAG_HELP.get(name, name)} (env AIRFLOW_BATCH_EMULATOR_{name.upper()})",
        )


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> EmulatorConfig:
    """Return the config from defaults < environment < ``--config`` < individual flags."""
    changes: dict[str, Any] = dict(config_from_env(environ))
    if args.config:
        changes.update(json.loads(args.config))
    for name in config_names():
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    return EmulatorConfig().updated(changes)


class _AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints its base URL once it accepts connections."""

    def __init__(self, config: uvicorn.Config, base_url: str) -> None:
        super().__init__(config)
        self.base_url = base_url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"airflow-batch emulator listening on {self.base_url}", flush=True)


def _log_to_stdout() -> None:
    """Send the emulator's log (``anthropic-beta`` headers received, ...) to stdout, one line each."""
    logger = logging.getLogger("airflow_batch.emulator")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def serve(host: str, port: int, data_dir: str | Path, config: EmulatorConfig) -> None:
    """Serve the emulator until SIGTERM/SIGINT; ``port=0`` binds a free port and prints it."""
    _log_to_stdout()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    real_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    app = create_app(data_dir, config)
    uv_config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="off",
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal; a no-op
    # handler lets that re-raise return here so the store is closed and the exit status is 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        _AnnouncingServer(uv_config, f"http://{shown_host}:{real_port}").run(sockets=[sock])
    finally:
        app.state.emulator.store.close()


def run_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Serve with the settings of parsed emulator flags; report bad settings through ``parser``."""
    try:
        config = config_from_args(args)
    except (ConfigError, json.JSONDecodeError) as exc:
        parser.error(str(exc))
    try:
        serve(args.host, args.port, args.data, config)
    except OSError as exc:
        print(f"airflow-batch emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
