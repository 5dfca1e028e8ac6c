"""The parameter reference page, generated from :data:`~airflow_batch.spec.parameters.PARAMETERS`.

``python -m airflow_batch.spec.reference`` writes it to ``docs/reference/parameters.md`` (or to
the path given); a test fails when the committed page differs from what this module renders.
"""

from __future__ import annotations

import re
import sys
from itertools import groupby
from pathlib import Path

from airflow_batch.spec.declaration import REQUIRED, TASKS, Parameter
from airflow_batch.spec.parameters import PARAMETERS

#: Where the page lives in the repository, relative to its root.
PAGE = Path("docs/reference/parameters.md")


def _markdown(doc: str) -> str:
    """Return reStructuredText literals (````x````) as Markdown code spans (```x```)."""
    return re.sub(r"``(.+?)``", r"`\1`", doc)


def _default(parameter: Parameter) -> str:
    if parameter.default is REQUIRED:
        return "required"
    others = [
        f"`{parameter.defaults[task]!r}` in `{TASKS[task]}`"
        for task in parameter.tasks
        if task in parameter.defaults
    ]
    return f"default `{parameter.default!r}`" + (f" (but {', '.join(others)})" if others else "")


def _entry(parameter: Parameter) -> str:
    tasks = ", ".join(f"`{TASKS[task]}`" for task in parameter.tasks)
    choices = ", ".join(f"`{choice!r}`" for choice in parameter.choices)
    see = parameter.see
    return (
        f"- **`{parameter.name}`** (`{parameter.type}`, {_default(parameter)}; {tasks}): "
        f"{_markdown(parameter.doc)}"
        + (f" One of {choices}." if choices else "")
        + (f" See [{see.split('.')[0].replace('-', ' ')}](../{see})." if see else "")
    )


def render() -> str:
    """Return the reference page's Markdown."""
    lines = [
        "# Parameters",
        "",
        "Every parameter of `anthropic_batch_job` and of the operators, declared once in",
        "`airflow_batch/spec/parameters.py`. This page is generated from those declarations by",
        "`python -m airflow_batch.spec.reference`; edit the declarations, not this page. How the",
        "pieces fit: [The factory and the operators](../operators.md).",
        "",
        "Each entry gives the type, the default and the callables taking the parameter. The factory,",
        "`anthropic_batch_job`, passes its arguments to the operators; `submit_kwargs`,",
        "`sensor_kwargs` and `gather_kwargs` reach every other argument of theirs.",
        "",
    ]
    for topic, parameters in groupby(PARAMETERS, key=lambda parameter: parameter.topic):
        lines += [f"## {topic}", "", *map(_entry, parameters), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Write the page to the path given (default ``docs/reference/parameters.md``)."""
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else PAGE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(), encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
