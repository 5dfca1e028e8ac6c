"""``python -m airflow_batch.emulator``: the same as ``airflow-batch emulator``."""

from __future__ import annotations

import argparse

from airflow_batch.emulator.server import add_emulator_arguments, run_from_args


def main() -> None:
    """Parse the emulator flags and serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m airflow_batch.emulator", description=__doc__)
    add_emulator_arguments(parser)
    run_from_args(parser, parser.parse_args())


if __name__ == "__main__":
    main()
