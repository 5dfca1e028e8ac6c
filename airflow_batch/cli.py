"""The ``airflow-batch`` command line; each subcommand registers its own flags."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """Return the ``airflow-batch`` parser with every subcommand."""
    from airflow_batch.dev import command as dev_command
    from airflow_batch.emulator.server import add_emulator_arguments, run_from_args

    parser = argparse.ArgumentParser(prog="airflow-batch", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    emulator = commands.add_parser(
        "emulator",
        help="run a local Message Batches API emulator",
        description="Serve the Message Batches API locally with simulated processing and fault injection.",
    )
    add_emulator_arguments(emulator)
    emulator.set_defaults(handler=lambda args: run_from_args(emulator, args))
    dev = commands.add_parser(
        "dev",
        help="run the emulator and a local Airflow on the example DAGs until Ctrl-C",
        description=(
            "Start the emulator and a local Airflow (api-server, scheduler, dag-processor, triggerer; "
            "LocalExecutor, SQLite, simple auth manager) with anthropic_default pointed at the emulator; "
            "print the UI address and login; stop everything on Ctrl-C."
        ),
    )
    dev_command.add_dev_arguments(dev)
    dev.set_defaults(handler=dev_command.run_from_args)
    under_dev = dev.add_subparsers(dest="dev_command", metavar="airflow ...")
    airflow_cli = under_dev.add_parser(
        "airflow",
        help="run the Airflow CLI on this workdir's deployment (its home, SQLite settings, DAGs)",
        description=(
            "Run `airflow <args>` with the environment of the deployment `airflow-batch dev` runs on "
            "--workdir, e.g. `airflow-batch dev airflow backfill create --dag-id daily_review_sentiment "
            "--from-date 2026-11-01 --to-date 2026-11-03`."
        ),
    )
    airflow_cli.add_argument(
        "airflow_args", nargs=argparse.REMAINDER, help="arguments of the airflow command"
    )
    airflow_cli.set_defaults(handler=dev_command.run_airflow_cli)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``airflow-batch`` command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if code := args.handler(args):
        raise SystemExit(code)


if __name__ == "__main__":
    main()
