"""The ``airflow-batch`` command line; each subcommand registers its own flags."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """Return the ``airflow-batch`` parser with every subcommand."""
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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``airflow-batch`` command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
