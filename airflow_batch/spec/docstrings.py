"""Which task takes which parameter, and the ``:param`` docstrings made from the declarations.

The declarations are :data:`airflow_batch.spec.parameters.PARAMETERS`.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from airflow_batch.spec.declaration import TASKS, Parameter, Task
from airflow_batch.spec.parameters import PARAMETERS


def parameters_of(task: Task) -> dict[str, Parameter]:
    """Return the parameters ``task`` takes, by name."""
    found: dict[str, Parameter] = {}
    for parameter in PARAMETERS:
        if task in parameter.tasks:
            if parameter.name in found:
                raise ValueError(f"parameter {parameter.name!r} is declared twice for {TASKS[task]}")
            found[parameter.name] = parameter
    return found


def param_lines(task: Task, names: Iterator[str] | list[str], width: int = 96) -> list[str]:
    """Return the ``:param`` lines of ``names`` (in that order) as ``task`` documents them."""
    declared = parameters_of(task)
    lines: list[str] = []
    for name in names:
        lines += textwrap.wrap(
            f":param {name}: {declared[name].doc}",
            width=width,
            subsequent_indent="    ",
            break_on_hyphens=False,
            break_long_words=False,
        )
    return lines


_Documented = TypeVar("_Documented", bound=Callable[..., Any])


def documented(task: Task) -> Callable[[_Documented], _Documented]:
    """Return a decorator appending the ``:param`` lines of ``task``'s signature to its docstring.

    The text lives only in :data:`PARAMETERS`; ``help()`` and the UI's docs read the generated
    docstring. Generated rather than checked against a copy in the source: a copy would be one
    more place to edit for each change, which is what this module exists to end.
    """

    def decorate(target: _Documented) -> _Documented:
        init = target.__init__ if inspect.isclass(target) else target
        names = [
            name
            for name, p in inspect.signature(init).parameters.items()
            if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        doc = inspect.cleandoc(target.__doc__ or "")
        target.__doc__ = "\n".join([doc, "", *param_lines(task, names)])
        return target

    return decorate
