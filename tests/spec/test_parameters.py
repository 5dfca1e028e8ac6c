"""Each parameter is declared once: the signatures, the docstrings and the reference page derive from it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_batch.job import anthropic_batch_job
from airflow_batch.operators.finalize import FinalizeBatchJobOperator
from airflow_batch.operators.gather import GatherResultsOperator
from airflow_batch.operators.retry import RetryFailedOperator
from airflow_batch.operators.submit import SubmitBatchesOperator
from airflow_batch.sensors.batches import BatchesSensor
from airflow_batch.spec import reference
from airflow_batch.spec.declaration import REQUIRED, TASKS, Task
from airflow_batch.spec.docstrings import param_lines, parameters_of

ROOT = Path(__file__).resolve().parents[2]
TARGETS: dict[Task, Any] = {
    "job": anthropic_batch_job,
    "submit": SubmitBatchesOperator,
    "wait": BatchesSensor,
    "gather": GatherResultsOperator,
    "retry": RetryFailedOperator,
    "finalize": FinalizeBatchJobOperator,
}


def signature_of(target: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    init = target.__init__ if inspect.isclass(target) else target
    return {
        name: parameter
        for name, parameter in inspect.signature(init).parameters.items()
        if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    }


def drift(task: Task) -> list[str]:
    """Return how ``task``'s signature differs from the declarations (empty when they agree)."""
    signature, declared = signature_of(TARGETS[task]), parameters_of(task)
    found = [f"{name}: in the signature, not declared" for name in signature.keys() - declared.keys()]
    found += [f"{name}: declared, not in the signature" for name in declared.keys() - signature.keys()]
    for name in signature.keys() & declared.keys():
        given, parameter = signature[name], declared[name]
        default = REQUIRED if given.default is inspect.Parameter.empty else given.default
        if default != parameter.default_in(task) or type(default) is not type(parameter.default_in(task)):
            found.append(
                f"{name}: default {default!r} in the signature, {parameter.default_in(task)!r} declared"
            )
        if given.annotation != parameter.type_in(task):
            found.append(
                f"{name}: type {given.annotation} in the signature, {parameter.type_in(task)} declared"
            )
    return sorted(found)


@pytest.mark.parametrize("task", list(TASKS))
def test_signature_agrees_with_the_declarations(task: Task) -> None:
    assert drift(task) == []


def test_drift_is_found_for_a_parameter_added_to_an_operator_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def gather(*, manifest: Any, surprise: int = 1, conn_id: str | None = None) -> None: ...

    monkeypatch.setitem(TARGETS, "gather", gather)
    found = drift("gather")
    assert "surprise: in the signature, not declared" in found
    assert any(line.startswith("retryable_error_types: declared, not in") for line in found)


def test_drift_is_found_for_a_different_default(monkeypatch: pytest.MonkeyPatch) -> None:
    def finalize(
        *,
        manifest: Any = None,
        job_dir: str | None = None,
        max_failure_rate: float | None = 0.5,
        asset: Any = None,
        results_format: Any = "parquet",
        publish_path: str | None = None,
        retry_rounds: int | None = None,
        trigger_rule: str = "all_done",
    ) -> None: ...

    monkeypatch.setitem(TARGETS, "finalize", finalize)
    found = drift("finalize")
    assert "max_failure_rate: default 0.5 in the signature, None declared" in found
    assert "results_format: default 'parquet' in the signature, 'jsonl' declared" in found


@pytest.mark.parametrize("task", list(TASKS))
def test_docstring_params_come_from_the_declarations(task: Task) -> None:
    target = TARGETS[task]
    names = list(signature_of(target))
    documented = [
        line for line in inspect.cleandoc(target.__doc__).splitlines() if line.startswith(":param ")
    ]
    assert [line.split(":")[1].removeprefix("param ") for line in documented] == names
    assert "\n".join(param_lines(task, names)) in inspect.cleandoc(target.__doc__)


def test_committed_reference_page_is_the_generated_one() -> None:
    committed = (ROOT / reference.PAGE).read_text(encoding="utf-8")
    assert committed == reference.render(), (
        f"{reference.PAGE} is out of date: run `python -m airflow_batch.spec.reference` and commit it"
    )


def test_reference_page_lists_every_declaration_once() -> None:
    page = reference.render()
    for task in TASKS:
        for name in parameters_of(task):
            assert f"- **`{name}`** (" in page
    assert page.count("- **`conn_id`** (") == 2  # given (submit) and inherited (later tasks): two meanings


#: The smallest valid arguments of each operator, to which one declared choice is added.
VALID: dict[Task, dict[str, Any]] = {
    "submit": {"output_path": "/tmp/out", "requests": [], "model": "claude-haiku-4-5"},
    "wait": {"manifest": {}},
    "gather": {"manifest": {}},
    "finalize": {"job_dir": "/tmp/out/job"},
}
DOCUMENTS = {
    **VALID["submit"],
    "requests": None,
    "documents": "/tmp/docs/*.pdf",
    "prompt_template": "Summarize.",
}
CHOICES = [
    (task, parameter.name)
    for task in VALID
    for parameter in parameters_of(task).values()
    if parameter.choices
]


@pytest.mark.parametrize(("task", "name"), CHOICES, ids=[f"{task}-{name}" for task, name in CHOICES])
def test_each_declared_choice_is_accepted_and_anything_else_refused_at_parse(task: Task, name: str) -> None:
    valid = DOCUMENTS if name == "delete_files" else VALID[task]
    for choice in parameters_of(task)[name].choices:
        TARGETS[task](task_id="t", **valid, **{name: choice})
    with pytest.raises(ValueError, match=name):
        TARGETS[task](task_id="t", **valid, **{name: "not-a-choice"})


def test_every_enumerated_setting_has_its_choices_declared() -> None:
    assert {name for _, name in CHOICES} == {
        "on_input_change", "delete_files", "cache_ttl", "budget_basis", "timeout_policy", "delete_batches",
        "on_results_gone",
    }  # fmt: skip
