"""``airflow-batch dev``: the emulator and a local Airflow deployment in one command.

:mod:`~airflow_batch.dev.deployment` is the one home of how a local Airflow is configured
(used by the command, ``make demo`` and the end-to-end tests),
:mod:`~airflow_batch.dev.processes` starts and stops process groups, and
:mod:`~airflow_batch.dev.command` is the command itself.
"""
