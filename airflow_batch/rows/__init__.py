"""A job's rows: the one contract every result and failure row is encoded through.

- :mod:`~airflow_batch.rows.contract`: the fields of a result row and a failure row (names,
  types, nullability) and the table columns derived from them. Every origin builds its rows
  through it: gathered answers (:mod:`~airflow_batch.rows.gathered`), answers reused from the
  store (:mod:`airflow_batch.reuse.hits`), invalid input (:mod:`airflow_batch.submit.chunking`)
  and the canary's answers (:mod:`airflow_batch.submit.canary`).
- :mod:`~airflow_batch.rows.lines`: the lines of a results stream, as decoded.
- :mod:`~airflow_batch.rows.gathered`: result lines turned into rows (the gather's hot path),
  with :mod:`~airflow_batch.rows.block` (a batch's settings, what a block gives),
  :mod:`~airflow_batch.rows.failure_rows` and :mod:`~airflow_batch.rows.tally` (counts, usage).
- :mod:`~airflow_batch.rows.failures`: the kinds of failure and which are worth paying for again.

Imports no Airflow and no SDK: plain data in, plain data out.
"""
