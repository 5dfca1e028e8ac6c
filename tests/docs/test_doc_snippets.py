"""Every code snippet of the docs and the README is checked against the code it describes.

Python snippets compile, import only names that exist, and call the factory, the operators and
the decorator with arguments they take; bash snippets name commands that exist (``make``
targets, ``airflow-batch`` and ``airflow`` subcommands and flags, test and bench files,
package extras); JSON snippets parse. The complete DAGs are run in ``test_doc_dags.py``.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import importlib.util
import inspect
import json
import re
import shlex
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from doc_pages import REPO, Snippet, all_snippets

PYTHON = all_snippets("python")
BASH = all_snippets("bash")


def _ids(snippets: list[Snippet]) -> list[str]:
    return [snippet.where for snippet in snippets]


def test_the_docs_have_snippets_of_each_kind_checked_here() -> None:
    assert len(PYTHON) >= 8 and len(BASH) >= 15
    assert all(snippet.lang in {"", "python", "bash", "json", "toml", "ini"} for snippet in all_snippets()), {
        snippet.where: snippet.lang for snippet in all_snippets()
    }


# --- Python -------------------------------------------------------------------------------


@pytest.mark.parametrize("snippet", PYTHON, ids=_ids(PYTHON))
def test_python_snippet_compiles(snippet: Snippet) -> None:
    compile(snippet.text, snippet.where, "exec")


@pytest.mark.parametrize("snippet", PYTHON, ids=_ids(PYTHON))
def test_python_snippet_imports_names_that_exist(snippet: Snippet) -> None:
    for node in ast.walk(ast.parse(snippet.text)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), (
                    f"{snippet.where}: `from {node.module} import {alias.name}`: {node.module} has no "
                    f"{alias.name}"
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


def _accepted_keywords() -> dict[str, set[str] | None]:
    """The keywords each documented callable takes (``None``: any)."""
    from airflow.sdk import BaseOperator

    import airflow_batch
    from airflow_batch.decorators.batch import anthropic_batch_task

    def parameters(function: Any) -> set[str] | None:
        signature = inspect.signature(function)
        if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            return None
        return set(signature.parameters)

    base = set(inspect.signature(BaseOperator.__init__).parameters) - {"self", "kwargs"}
    accepted: dict[str, set[str] | None] = {
        "anthropic_batch_job": parameters(airflow_batch.anthropic_batch_job)
    }
    for name in (
        "SubmitBatchesOperator",
        "BatchesSensor",
        "GatherResultsOperator",
        "RetryFailedOperator",
        "FinalizeBatchJobOperator",
    ):
        operator = getattr(airflow_batch, name)
        own = {
            parameter
            for cls in operator.__mro__
            if cls.__module__.startswith("airflow_batch") and "__init__" in vars(cls)
            for parameter in inspect.signature(cls.__init__).parameters
        }
        accepted[name] = (own | base) - {"self", "kwargs"}
    # @task.anthropic_batch takes the factory's keywords, and its own group_id.
    factory = accepted["anthropic_batch_job"]
    accepted["anthropic_batch"] = None if factory is None else factory | {"group_id", "python_callable"}
    assert inspect.signature(anthropic_batch_task).parameters
    return accepted


def _documented_calls(tree: ast.AST) -> Iterator[tuple[str, ast.Call]]:
    """Calls of the factory, of an operator (or its ``.partial``) and of ``@task.anthropic_batch``."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name):
            yield func.id, node
        elif isinstance(func, ast.Attribute):
            if func.attr == "partial" and isinstance(func.value, ast.Name):
                yield func.value.id, node
            elif func.attr == "anthropic_batch":
                yield "anthropic_batch", node


@pytest.mark.parametrize("snippet", PYTHON, ids=_ids(PYTHON))
def test_python_snippet_calls_the_package_with_arguments_it_takes(snippet: Snippet) -> None:
    accepted = _accepted_keywords()
    for name, call in _documented_calls(ast.parse(snippet.text)):
        if name not in accepted or accepted[name] is None:
            continue
        unknown = {keyword.arg for keyword in call.keywords if keyword.arg} - accepted[name]  # type: ignore[operator]
        assert not unknown, f"{snippet.where}: {name}() takes no {sorted(unknown)}"


def test_the_argument_check_catches_a_misspelled_argument() -> None:
    tree = ast.parse(
        'anthropic_batch_job("x", reuse_answer=True)\nBatchesSensor.partial(task_id="w", polls=2)'
    )
    accepted = _accepted_keywords()
    unknown = {
        name: {keyword.arg for keyword in call.keywords} - (accepted[name] or set())
        for name, call in _documented_calls(tree)
    }
    assert unknown == {"anthropic_batch_job": {"reuse_answer"}, "BatchesSensor": {"polls"}}


# --- JSON, TOML, INI -------------------------------------------------------------------------

DATA = [snippet for snippet in all_snippets() if snippet.lang in {"json", "toml", "ini"}]


@pytest.mark.parametrize("snippet", DATA, ids=_ids(DATA))
def test_data_snippet_parses(snippet: Snippet) -> None:
    if snippet.lang == "json":
        json.loads(snippet.text)
    elif snippet.lang == "toml":
        tomllib.loads(snippet.text)
    else:
        configparser.ConfigParser(interpolation=None).read_string(snippet.text, snippet.where)


# --- bash -----------------------------------------------------------------------------------

#: Commands a snippet may use that are not this project's: checked to exist on a usual machine
#: only by name, since the reader's machine is not this one.
OTHER_TOOLS = {"cd", "curl", "export", "git", "kill", "ls", "mkdir", "python3", "uv"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SEPARATORS = set(";&|()")


def commands(text: str) -> Iterator[list[str]]:
    """The simple commands of a bash snippet (words after any leading ``NAME=value``)."""
    pending = ""
    for line in text.replace("\\\n", " ").split("\n"):
        pending += line + "\n"
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # a quoted string goes on on the next line
            continue
        yield from _line_commands(pending)
        pending = ""
    assert not pending.strip(), f"unclosed quote in {pending!r}"


def _line_commands(line: str) -> Iterator[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words: list[str] = []
    for token in lexer:
        if set(token) <= _SEPARATORS:
            if words:
                yield words
            words = []
        elif words or not _ASSIGNMENT.match(token):
            words.append(token)
    if words:
        yield words


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def _extras() -> set[str]:
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def _airflow_batch_args(args: list[str]) -> None:
    """Parse ``airflow-batch <args>`` with the command's own parser; ``dev airflow`` goes on to Airflow's."""
    from airflow_batch.cli import build_parser

    parsed = build_parser().parse_args(args)
    if getattr(parsed, "dev_command", None) == "airflow":
        _airflow_args(parsed.airflow_args)


def _airflow_args(args: list[str]) -> None:
    from airflow.cli.cli_parser import get_parser

    get_parser().parse_args(args)


def check_command(words: list[str]) -> None:
    """Fail unless ``words`` is a command this project (or a documented tool) has."""
    program, args = words[0], words[1:]
    name = Path(program).name
    if name == "make":
        targets = [arg for arg in args if "=" not in arg and not arg.startswith("-")]
        assert set(targets) <= _make_targets(), f"make has no target {set(targets) - _make_targets()}"
    elif name == "airflow-batch":
        _airflow_batch_args(args)
    elif name == "airflow":
        _airflow_args(args)
    elif name in {"pytest", "py.test"}:
        paths = [arg.split("::")[0] for arg in args if not arg.startswith("-") and "/" in arg]
        missing = [path for path in paths if not (REPO / path).exists()]
        assert not missing, f"no test file {missing}"
    elif name in {"python", "python3"} and args and args[0] == "-m":
        assert importlib.util.find_spec(args[1]) is not None, f"no module {args[1]}"
    elif name == "python" and args and args[0].endswith(".py"):
        assert (REPO / args[0]).exists(), f"no script {args[0]}"
    elif name == "pip" and args[:1] == ["install"]:
        for requirement in args[1:]:
            match = re.fullmatch(r"airflow-batch\[([\w,]+)\]", requirement)
            if match:
                unknown = set(match[1].split(",")) - _extras()
                assert not unknown, f"airflow-batch has no extra {unknown}"
    else:
        assert name in OTHER_TOOLS, f"unknown command {program!r}: add it to OTHER_TOOLS if it is meant"


@pytest.mark.parametrize("snippet", BASH, ids=_ids(BASH))
def test_bash_snippet_names_commands_that_exist(snippet: Snippet, capsys: pytest.CaptureFixture[str]) -> None:
    found = list(commands(snippet.text))
    for words in found:
        try:
            check_command(words)
        except SystemExit:
            pytest.fail(f"{snippet.where}: `{shlex.join(words)}`: {capsys.readouterr().err.strip()}")
        except AssertionError as error:
            pytest.fail(f"{snippet.where}: `{shlex.join(words)}`: {error}")


@pytest.mark.parametrize(
    "text",
    [
        "make tests",
        ".venv/bin/airflow-batch dev --workers 2",
        "airflow-batch dev airflow backfill create --dag-id x --from 2026-01-01",
        ".venv/bin/pytest tests/nowhere/test_x.py",
        "pip install 'airflow-batch[s3]'",
        "airflo dags test x",
    ],
)
def test_the_bash_check_catches_a_command_that_does_not_exist(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (words,) = commands(text)
    with pytest.raises((AssertionError, SystemExit)):
        check_command(words)


def test_bash_commands_split_like_a_shell() -> None:
    text = (
        "A=1 make up ARGS='--port 8081'   # a comment\n"
        "TOKEN=$(curl -s http://x | python3 -c 'import sys') && export B=2 \\\n  C=3 &\n"
    )
    assert list(commands(text)) == [
        ["make", "up", "ARGS=--port 8081"],
        ["curl", "-s", "http://x"],
        ["python3", "-c", "import sys"],
        ["export", "B=2", "C=3"],
    ]


def test_other_tools_are_real_programs_here() -> None:
    # A name in OTHER_TOOLS that no machine has would be a typo let through.
    missing = {tool for tool in OTHER_TOOLS - {"cd", "export", "uv"} if shutil.which(tool) is None}
    assert not missing
