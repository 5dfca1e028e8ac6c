"""The batch jobs page's HTML: the view model (:mod:`airflow_batch.plugins.views`) through a template.

Markup and CSS live in ``templates/``; autoescaping is on, so every name, run id and path a
manifest carries is escaped wherever the template prints it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

import jinja2

from airflow_batch.plugins.display import bar_segments, console_links, duration, file_href, is_live
from airflow_batch.plugins.job_view import job_href
from airflow_batch.plugins.views import JobView

if TYPE_CHECKING:
    from airflow_batch.plugins.job_view import JobCharts


@cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("airflow_batch.plugins", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.globals.update(bar_segments=bar_segments, console_links=console_links, file_href=file_href)
    environment.globals["job_href"] = job_href
    environment.filters["duration"] = duration
    return environment


def render_page(
    jobs: Sequence[JobView],
    *,
    base: str,
    title: str,
    subtitle: str,
    ui_base: str = "",
    show_rounds: bool = False,
) -> str:
    """Return the HTML page listing ``jobs``; rounds get their own rows when ``show_rounds``."""
    return (
        _environment()
        .get_template("jobs.html")
        .render(
            jobs=jobs,
            base=base,
            title=title,
            subtitle=subtitle,
            ui_base=ui_base,
            show_rounds=show_rounds,
            live=is_live(jobs),
        )
    )


def render_job_page(charts: JobCharts, *, base: str) -> str:
    """Return the HTML page of one job's charts (``templates/job.html``)."""
    return _environment().get_template("job.html").render(charts=charts, base=base)
