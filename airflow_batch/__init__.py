"""Anthropic Message Batches as an Apache Airflow workflow."""

__version__ = "0.1.0"
