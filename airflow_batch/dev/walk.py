"""The walk of one request: which of the package's modules a request passes on its way to a row.

Run ``.venv/bin/python bench/walk.py``: it builds a job of one request with
:func:`anthropic_batch_job` (:func:`one_request_job`: inline request, no retry round, Parquet
output), runs it with ``dag.test()`` against the embedded emulator under :class:`RequestWalk`,
and prints the walk and its counts. ``tests/packaging/test_walk.py`` runs the same job and
fails on a climb back or on a walk longer than its bound.

Definitions (what the tool measures, so a count means the same thing next time):

- **The request's data**: a value that is, or holds in plain data (``str``, ``bytes``, a
  ``dict``, ``list``, ``tuple`` or ``set``, the fields of the package's own dataclasses and
  ``msgspec.Struct`` records), the request's ``custom_id``: every shape of the request has it
  (the input record, the chunk line, the result line, the row). An operator, a hook, an Airflow
  or SDK object, an iterator or a file path is a handle on the data, not the data: it is not
  looked into.
- **A carrier**: a call of a function of ``airflow_batch`` (not :mod:`airflow_batch.emulator`,
  the API's other side, nor :mod:`airflow_batch.dev`) that receives the request's data in an
  argument or returns (or yields) it.
- **The request's path**: for each carrier call, the package's frames on the stack, from the
  outermost (the factory at parse time; a task's ``execute`` or ``execute_complete`` or a
  trigger's ``run`` when the job runs) down to the carrier. A module that only forwards -- a
  pass-through -- is on the path without carrying anything itself.
- **The walk**: the distinct modules of the request's path, in the order they are first met.
  Its **hops** are its modules (the issue counted 31 by reading the code).
- **The walk with its batch**: the same, where the id of the batch holding the request is the
  request's data too, from the moment a function on the request's path returns it (the create
  that sent the request's bytes): it adds the wait (sensor, trigger, ``wait/``), which sees
  only the batch, and whatever else reads a manifest (links, metrics, lineage).
- **A climb back**: a direct call on a path (the caller's frame right above the callee's,
  with no frame of another library between them) from a module of a lower :data:`LAYERS` rank
  into a module of a higher rank that the caller's module imports: ``api`` importing
  ``submit``, a stage package importing an operator. A lower module calling a function it was
  handed (a callback: ``consume=`` of a download) depends on nothing above it: it is listed
  apart, as a callback up. A generator's resumption is its consumer pulling data, not a call
  into the generator's module: neither.

Tracing uses ``sys.settrace`` (and ``threading.settrace`` for threads the job starts): a call
event for every Python call, return events only for the package's frames (no line events).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import inspect
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from airflow.sdk import DAG

    from airflow_batch.emulator.process import EmulatorProcess

PACKAGE = "airflow_batch"
NOT_TRACED = ("airflow_batch.emulator", "airflow_batch.dev")
"""The emulator is the API's side of the wire; ``dev`` holds the tools that run the job."""

LAYERS: tuple[tuple[str, ...], ...] = (
    ("exceptions", "manifest", "media", "memory", "storage", "layout"),
    ("api",),
    ("rules",),
    (
        *("submit", "wait", "gather", "rows", "reuse"),
        *("folder", "round_files", "part_files", "job_files"),
        *("spec", "settings", "history", "results", "lineage", "metrics"),
    ),
    ("hooks",),
    ("triggers", "sensors", "operators", "links", "plugins"),
    ("job", "decorators"),
)
"""The package's layers, lowest first, by the first name under ``airflow_batch``: the shared
records every layer reads, the API seam, the API's rules, the stage packages and the job's
records, the hook, the Airflow-facing shell, the factory. A module may call its own layer and
any lower one."""

WALK_CUSTOM_ID = "walk-of-one-request"
"""The ``custom_id`` of the traced request: distinctive, so no other value holds it by chance."""

_BATCH_ID = re.compile(r"msgbatch_[0-9A-Za-z]+")
_GENERATOR_FLAGS = 0x20 | 0x200  # CO_GENERATOR | CO_ASYNC_GENERATOR
_SCAN_DEPTH = 8


def layer_of(module: str) -> int:
    """Return the :data:`LAYERS` rank of ``module`` (a dotted name under ``airflow_batch``)."""
    top = module.split(".")[1] if "." in module else module
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise ValueError(f"module {module!r} is in no layer of airflow_batch.dev.walk.LAYERS: add it there")


def short_name(module: str) -> str:
    """Return ``module`` without the package prefix, as the issue writes it (``submit/round``)."""
    return module.removeprefix(f"{PACKAGE}.").replace(".", "/")


@dataclass(frozen=True)
class Step:
    """One function on the request's path."""

    module: str
    function: str

    def __str__(self) -> str:
        return f"{short_name(self.module)}:{self.function}"


@dataclass
class Walk:
    """What :class:`RequestWalk` recorded: the walk, its first step per module, climbs and callbacks."""

    modules: list[str] = field(default_factory=list)
    first_step: dict[str, Step] = field(default_factory=dict)
    carriers: set[str] = field(default_factory=set)
    climbs: list[tuple[Step, Step]] = field(default_factory=list)
    callbacks: list[tuple[Step, Step]] = field(default_factory=list)

    @property
    def hops(self) -> int:
        """Return the number of modules on the walk."""
        return len(self.modules)

    def add(self, path: list[tuple[FrameType, str, bool]], carrier: str) -> None:
        """Add the request's path (outermost frame first) down to a call of ``carrier``."""
        self.carriers.add(carrier)
        previous: Step | None = None
        called_directly = False
        for frame, module, direct_to_inner in path:
            step = Step(module, frame.f_code.co_qualname)
            if module not in self.first_step:
                self.modules.append(module)
                self.first_step[module] = step
            resumed = bool(frame.f_code.co_flags & _GENERATOR_FLAGS)
            upward = previous is not None and layer_of(previous.module) < layer_of(module)
            if previous is not None and upward and called_directly and not resumed:
                kind = self.climbs if _imports(previous.module) & _packages_of(module) else self.callbacks
                if (previous, step) not in kind:
                    kind.append((previous, step))
            previous, called_directly = step, direct_to_inner

    def lines(self) -> list[str]:
        """Return the walk as text: one module a line, then the counts, climbs back and callbacks."""
        width = max((len(short_name(m)) for m in self.modules), default=0)
        out = []
        for number, module in enumerate(self.modules, 1):
            role = "carries" if module in self.carriers else "passes"
            out.append(
                f"{number:3d}  {short_name(module).ljust(width)}  {role:7s}  "
                f"L{layer_of(module)}  {self.first_step[module].function}"
            )
        passing = self.hops - len(self.carriers & set(self.modules))
        out.append(f"hops: {self.hops} modules ({passing} only pass it on)")
        out.append(f"climbs back: {len(self.climbs)}")
        out += [f"  {caller} -> {callee}" for caller, callee in self.climbs]
        out.append(f"callbacks up (a function handed down, not imported): {len(self.callbacks)}")
        out += [f"  {caller} -> {callee}" for caller, callee in self.callbacks]
        return out


@functools.cache
def _imports(module: str) -> frozenset[str]:
    """Return the modules and packages ``module``'s source imports (at any level, typing aside)."""
    try:
        spec = importlib.util.find_spec(module)
    except ValueError:  # in sys.modules without a spec: built in memory, no source to read
        return frozenset()
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return frozenset()
    names: set[str] = set()
    for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return frozenset(names)


def _packages_of(module: str) -> set[str]:
    """Return ``module`` and every package above it (``a.b.c``: ``a.b.c``, ``a.b``)."""
    parts = module.split(".")
    return {".".join(parts[:n]) for n in range(2, len(parts) + 1)}


class RequestWalk:
    """A context manager tracing the modules the request ``custom_id`` passes (see the module doc).

    :attr:`request` is the walk of the request itself; :attr:`with_batch` adds the modules that
    see only its batch's id (the wait, the links, the metrics).
    """

    def __init__(self, custom_id: str = WALK_CUSTOM_ID) -> None:
        self.request = Walk()
        self.with_batch = Walk()
        self._request_markers = ({custom_id}, {custom_id.encode()})
        self._batch_markers: tuple[set[str], set[bytes]] = (set(), set())
        self._module: dict[CodeType, str | None] = {}
        self._on_path: set[int] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> RequestWalk:
        threading.settrace(self._global)
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]

    def _traced(self, code: CodeType, frame: FrameType) -> str | None:
        if code not in self._module:
            name = frame.f_globals.get("__name__", "")
            inside = name.startswith(f"{PACKAGE}.") and not name.startswith(NOT_TRACED)
            self._module[code] = name if inside else None
        return self._module[code]

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if event != "call" or self._traced(code, frame) is None:
            return None
        frame.f_trace_lines = False
        flags = code.co_flags
        count = code.co_argcount + code.co_kwonlyargcount + bool(flags & 0x04) + bool(flags & 0x08)
        values = frame.f_locals
        arguments = [values[name] for name in code.co_varnames[:count] if name in values and name != "self"]
        self._record(frame, arguments)
        return self._local

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "return":
            if arg is not None:
                self._record(frame, [arg])
            if id(frame) in self._on_path:
                self._learn_batch_ids(arg, 0, set())
            with self._lock:
                self._on_path.discard(id(frame))
        return None

    def _record(self, frame: FrameType, values: list[Any]) -> None:
        """Add the path down to ``frame`` to the walks whose data ``values`` carry."""
        if any(self._carries(value, self._request_markers, 0, set()) for value in values):
            walks: tuple[Walk, ...] = (self.request, self.with_batch)
        elif self._batch_markers[0] and any(self._carries(v, self._batch_markers, 0, set()) for v in values):
            walks = (self.with_batch,)
        else:
            return
        path: list[tuple[FrameType, str, bool]] = []  # (frame, module, nothing foreign to the next inner)
        current: FrameType | None = frame
        direct = True
        while current is not None:
            module = self._traced(current.f_code, current)
            if module is not None:
                path.append((current, module, direct))
                direct = True
            else:
                direct = False
            current = current.f_back
        path.reverse()
        with self._lock:
            if len(walks) == 2:  # the request's own path: a batch id it returns joins the data
                self._on_path |= {id(each) for each, _, _ in path}
            for walk in walks:
                walk.add(path, path[-1][1])

    def _carries(self, value: Any, markers: tuple[set[str], set[bytes]], depth: int, seen: set[int]) -> bool:
        if isinstance(value, str):
            return any(text in value for text in markers[0])
        if isinstance(value, (bytes, bytearray)):
            return any(text in value for text in markers[1])
        if isinstance(value, memoryview):
            return self._carries(value.tobytes(), markers, depth, seen)
        return any(self._carries(item, markers, depth + 1, seen) for item in self._items(value, depth, seen))

    def _learn_batch_ids(self, value: Any, depth: int, seen: set[int]) -> None:
        if isinstance(value, str):
            for batch_id in _BATCH_ID.findall(value):
                with self._lock:
                    self._batch_markers[0].add(batch_id)
                    self._batch_markers[1].add(batch_id.encode())
            return
        for item in self._items(value, depth, seen):
            self._learn_batch_ids(item, depth + 1, seen)

    @staticmethod
    def _items(value: Any, depth: int, seen: set[int]) -> Iterator[Any]:
        """Yield what a plain-data ``value`` holds (nothing for a handle, or past the depth)."""
        if depth >= _SCAN_DEPTH or id(value) in seen or isinstance(value, type):
            return
        if isinstance(value, dict):
            seen.add(id(value))
            for key, item in list(value.items()):
                yield key
                yield item
        elif isinstance(value, (list, tuple, set, frozenset)):
            seen.add(id(value))
            yield from list(value)
        elif isinstance(value, msgspec.Struct) and _own(type(value)):
            seen.add(id(value))
            for name in value.__struct_fields__:
                yield getattr(value, name, None)
        elif all(_own(kind) for kind in inspect.getmro(type(value))[:-1]) and dataclasses.is_dataclass(value):
            # The package's own records only: an operator is a dataclass too, through Airflow's.
            seen.add(id(value))
            for each in dataclasses.fields(value):
                yield getattr(value, each.name, None)


def _own(kind: type) -> bool:
    return kind.__module__.startswith(f"{PACKAGE}.")


def one_request_request() -> dict[str, Any]:
    """Return the traced request: one short message, ``custom_id`` :data:`WALK_CUSTOM_ID`."""
    return {
        "custom_id": WALK_CUSTOM_ID,
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Say hello."}],
        },
    }


def one_request_job(dag_id: str, output_path: str, conn_id: str) -> DAG:
    """Return a DAG of one :func:`anthropic_batch_job` of one inline request, no retry, Parquet out.

    The factory is called while :class:`RequestWalk` traces, so build the DAG inside it.
    """
    import pendulum
    from airflow.sdk import DAG

    from airflow_batch.job import anthropic_batch_job

    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        anthropic_batch_job(
            "walk",
            requests=[one_request_request()],
            output_path=output_path,
            conn_id=conn_id,
            max_retry_rounds=0,
            poll_interval=0.2,
            results_format=["jsonl", "parquet"],
            submit_kwargs={"count_tokens_sample": 0},
        )
    return dag


RETRIEVE_ROUTE = "GET /v1/messages/batches/{batch_id}"


def traced_job(
    emulator: EmulatorProcess, output_path: str, conn_id: str, run: Callable[[DAG], DagRun]
) -> tuple[RequestWalk, DAG, DagRun]:
    """Run :func:`one_request_job` with ``run`` (``dag.test()``) under a :class:`RequestWalk`;
    return the tracer, the DAG and its run.

    The batch is held on the emulator (a start delay) until the wait has retrieved it once, so
    the wait finds it in progress and defers to the trigger, as a real job's wait does, however
    slow the traced submit is on a loaded machine.
    """
    emulator.configure(throughput=1_000_000_000, start_delay_seconds=3600)
    done = threading.Event()

    def release_once_polled() -> None:
        deadline = time.monotonic() + 600
        try:
            while not done.wait(0.05) and time.monotonic() < deadline:
                if any(routes.get(RETRIEVE_ROUTE) for routes in emulator.calls().values()):
                    return
        finally:
            emulator.configure(start_delay_seconds=0)

    release = threading.Thread(target=release_once_polled, name="walk-release", daemon=True)
    release.start()  # before tracing: the helper thread is not part of the walk
    try:
        with RequestWalk() as tracer:
            dag = one_request_job("walk_of_one_request", output_path, conn_id)
            dag_run = run(dag)
    finally:
        done.set()
        release.join()
    return tracer, dag, dag_run
