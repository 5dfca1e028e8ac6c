"""What a batch job is configured with: each parameter declared once, and the job's written spec.

:mod:`~airflow_batch.spec.parameters` declares every argument of ``anthropic_batch_job`` and of
the operators (type, default, documentation, the tasks taking it); the docstrings and the
reference page (:mod:`~airflow_batch.spec.reference`) are generated from it.
:mod:`~airflow_batch.spec.job_spec` holds :class:`JobSpec`, what the submit writes once into the
job folder and the later tasks and triggers read back.
"""
