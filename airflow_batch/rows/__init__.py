"""A job's rows: the one contract every result and failure row is encoded through.

:mod:`~airflow_batch.rows.contract` declares the fields of a result row and a failure row
(names, types, nullability) and the Parquet columns derived from them; every origin builds its
rows through it: gathered answers (:mod:`airflow_batch.rows.gathered`), reused answers
(:mod:`airflow_batch.reuse.hits`), invalid input (:mod:`airflow_batch.submit.chunking`) and the
canary's answers (:mod:`airflow_batch.submit.canary`). :mod:`~airflow_batch.rows.failures` says
which failures are worth paying for again.
"""
