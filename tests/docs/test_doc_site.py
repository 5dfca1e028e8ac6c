"""The documentation site builds with strict link checking, the README is a front door whose
links resolve, and the docs' tables of metrics, exceptions and settings are the code's."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from doc_pages import DOCS, README, REPO, anchors, pages, prose, table_rows

_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def _first_code(cell: str) -> str:
    match = re.search(r"`([^`]+)`", cell)
    assert match, f"no `name` in table cell {cell!r}"
    return match[1]


def test_site_builds_with_strict_link_checking(tmp_path: Path) -> None:
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    assert (site / "reference" / "parameters" / "index.html").exists()
    # The lineage facet's schema at its repository path and where its _schemaURL points.
    from airflow_batch.lineage.figures import FACET_SCHEMA_URL

    schema = (DOCS / "lineage" / "AirflowBatchRunFacet.json").read_bytes()
    assert (site / "lineage" / "AirflowBatchRunFacet.json").read_bytes() == schema
    published = FACET_SCHEMA_URL.split("#")[0].removeprefix("https://airflow-batch.readthedocs.io/")
    assert (site / published).read_bytes() == schema
    # Python-Markdown's lists want 4-space indents: a list item's paragraph or fence indented by
    # 2 after a blank line renders as a code block, and swallows the items after it.
    for page in sorted(DOCS.rglob("*.md")):
        fences = len(re.findall(r"^\s*```[\w+-]*\s*$", page.read_text(), flags=re.M)) // 2
        name = page.relative_to(DOCS).with_suffix("")
        html = site / (f"{name}.html" if name.name == "index" else f"{name}/index.html")
        rendered = html.read_text()
        assert rendered.count("<pre") == fences, f"{page.name}: a code block no fence opened"
        text = re.sub(r"(?s)<(pre|script).*?</\1>", "", rendered)
        swallowed = re.findall(r"\n[ \t]*(?:[-*]|\d+\.) \S.{0,40}", text)
        assert not swallowed, f"{page.name}: list items rendered as text: {swallowed}"


def test_strict_build_fails_on_a_broken_anchor(tmp_path: Path) -> None:
    # The check the build is trusted for: a link to a heading that does not exist fails it.
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [costs](cost.md#no-such-heading).\n")
    (docs / "cost.md").write_text("# Cost\n")
    config = (REPO / "mkdocs.yml").read_text()
    config = re.sub(r"(?ms)^nav:.*", "", config).replace("  - docs/hooks.py\n", "").replace("hooks:\n", "")
    (tmp_path / "mkdocs.yml").write_text(config)
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert build.returncode != 0
    assert "no-such-heading" in build.stderr


def test_readme_is_the_front_door() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for must in ("pip install 'airflow-batch[", "make demo", "make up", "make test", "make venv"):
        assert must in text, must
    linked = {match["target"].split("#")[0] for match in _LINK.finditer(text)}
    nav_pages = set(re.findall(r":\s+([\w/-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), flags=re.M))
    missing = {page for page in nav_pages if f"docs/{page}" not in linked} - {"index.md"}
    assert not missing, f"pages of the site the README does not link: {sorted(missing)}"


@pytest.mark.parametrize("page", [README], ids=["README.md"])
def test_readme_links_resolve(page: Path) -> None:
    # The site's own links are checked by the strict build; the README is outside it.
    for match in _LINK.finditer(prose(page)):
        target = match["target"]
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path) if path else page
        assert file.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            assert anchor in anchors(file), f"{page.name}: link to {target}: no such heading"


def test_every_metric_is_in_the_docs_table() -> None:
    from airflow_batch.metrics import METRICS

    documented: dict[str, str] = {}
    for cells in table_rows(DOCS / "monitoring.md", "metric"):
        for name in re.findall(r"`([\w.]+)`", cells[0]):
            documented[name] = cells[1]
    assert documented == {name: kind for name, (kind, _) in METRICS.items()}


def test_every_exception_is_documented() -> None:
    import airflow_batch.exceptions as exceptions
    import airflow_batch.rules.schema as schema

    table = {_first_code(cells[0]) for cells in table_rows(DOCS / "failures.md", "error")}
    defined = {
        name
        for name, value in vars(exceptions).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == exceptions.__name__
    }
    assert table <= defined | {"SchemaError"}, table - defined
    assert hasattr(schema, "SchemaError")
    everything = "\n".join(prose(page) for page in pages())
    undocumented = {name for name in defined if not re.search(rf"\b{name}\b", everything)}
    assert not undocumented, f"exceptions no page names: {sorted(undocumented)}"


def test_configuration_reference_is_the_settings_section() -> None:
    from airflow_batch.settings import OPTIONS

    rows = table_rows(DOCS / "reference" / "configuration.md", "option")
    documented = {_first_code(cells[0]): (cells[1].strip("`"), cells[2]) for cells in rows}
    expected = {name: (option.default or "(none)", option.type) for name, option in OPTIONS.items()}
    assert documented == expected


def test_every_setting_the_docs_name_exists() -> None:
    from airflow_batch.settings import OPTIONS

    everything = "\n".join(page.read_text() for page in pages())
    named = set(re.findall(r"\[airflow_batch\] (\w+)", everything))
    named |= {name.lower() for name in re.findall(r"AIRFLOW__AIRFLOW_BATCH__(\w+)", everything)}
    assert named and named <= set(OPTIONS), named - set(OPTIONS)


def test_every_emulator_setting_is_in_the_docs_table() -> None:
    from airflow_batch.emulator.server import config_names

    documented = {
        name
        for cells in table_rows(DOCS / "emulator.md", "setting")
        for name in re.findall(r"`(\w+)`", cells[0])
    }
    assert documented == set(config_names())


def test_every_flag_of_the_command_line_is_documented() -> None:
    from airflow_batch.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    flags = {
        option
        for command in commands.values()
        for action in command._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    everything = "\n".join(page.read_text() for page in pages())
    emulator_settings = {"--" + name.replace("_", "-") for name in _emulator_setting_names()}
    # Each emulator setting is also a flag; the settings table documents those.
    undocumented = {flag for flag in flags - emulator_settings if flag not in everything}
    assert not undocumented, f"flags no page names: {sorted(undocumented)}"


def _emulator_setting_names() -> list[str]:
    from airflow_batch.emulator.server import config_names

    return list(config_names())


def test_benchmarks_page_speaks_of_the_product() -> None:
    text = (DOCS / "benchmarks.md").read_text()
    assert "bench/" in text
    assert not re.search(r"\bissues?\b", text, flags=re.I)


def test_every_parameter_of_the_factory_and_operators_is_in_the_reference() -> None:
    import airflow_batch

    reference = (DOCS / "reference" / "parameters.md").read_text()
    documented = set(re.findall(r"`(\w+)`", reference))
    callables = {
        "anthropic_batch_job": airflow_batch.anthropic_batch_job,
        **{
            name: getattr(airflow_batch, name).__init__
            for name in (
                "SubmitBatchesOperator",
                "BatchesSensor",
                "GatherResultsOperator",
                "RetryFailedOperator",
                "FinalizeBatchJobOperator",
            )
        },
    }
    missing = {
        f"{name}({parameter})"
        for name, function in callables.items()
        for parameter, spec in inspect.signature(function).parameters.items()
        if parameter not in {"self", "kwargs", "group_id", "task_id"}
        and spec.kind is not spec.VAR_KEYWORD
        and parameter not in documented
    }
    assert not missing, f"parameters the reference does not document: {sorted(missing)}"
