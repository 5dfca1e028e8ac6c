"""A local server speaking the Message Batches API wire protocol, for tests, demos and CI.

Run it with ``airflow-batch emulator --port 8765 --data DIR`` (or
``python -m airflow_batch.emulator``) and point the ``anthropic`` SDK at it with
``base_url="http://127.0.0.1:8765"``. See ``faults`` for settings, ``answers`` for what a
synthetic answer says (``schema_instance`` for structured outputs), ``responses`` for its
tokens, caching and wire form, ``tokenizer`` and ``prompt_cache`` for token counts and cache
lifetimes, ``limits`` for the organisation's queue, rate and spend limits, ``betas`` for the
beta names it accepts, ``processing`` for simulated progress and ``store`` for the durable
layout. This package never imports Airflow, the ``anthropic`` SDK or pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_batch.emulator.faults import EmulatorConfig

if TYPE_CHECKING:
    from airflow_batch.emulator.process import EmulatorProcess

__all__ = ["EmulatorConfig", "EmulatorProcess"]


def __getattr__(name: str) -> Any:
    # Lazy: the server process must not pay for importing the client side (httpx).
    if name == "EmulatorProcess":
        from airflow_batch.emulator.process import EmulatorProcess

        return EmulatorProcess
    raise AttributeError(name)
