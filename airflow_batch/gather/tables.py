"""The merged results and failures as Parquet tables with typed columns (``airflow-batch[parquet]``).

``results.parquet`` columns, in order: ``custom_id``, ``row``, the passthrough fields (the
record's ``input`` fields, each its own column), each top-level property of the output schema
as its own column (or ``text`` when the job has no schema), ``model``, ``stop_reason``, the
token columns, ``round``, ``batch_id``, ``reused_from`` (null for an answer of the job's own
batches; else the batch it was reused from, or ``canary`` for an answer the canary got).
JSON Schema types map to Arrow types: string -> string, integer -> int64, number -> float64,
boolean -> bool, an enum of strings -> a dictionary-encoded string, an object -> a struct of its
properties, an array -> a list of its items, ``anyOf`` of one type and null -> that type
(nullable); anything else -> its JSON text.

``failures.parquet``: ``custom_id``, ``row``, the passthrough fields, ``result_type``,
``error_type``, ``message``, ``request_id``, ``retryable``, ``round``, ``batch_id``.

``read_table`` builds the same columns from the JSONL files when finalize wrote no Parquet
(:func:`read_flat_table`), so a reader sees one shape whatever the job's ``results_format``.

Tables are written from the merged JSONL files a row group at a time, so memory holds one row
group whatever the job's size. Passthrough columns take the types of their values in the
first row group; a later value of another type fails the write naming the field and the row.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from airflow_batch.memory import paused_gc
from airflow_batch.storage import atomic_writer, iter_jsonl_lines

if TYPE_CHECKING:
    import pyarrow as pa
    from airflow.sdk import ObjectStoragePath

ROW_GROUP = 20_000
_HEAD_COLUMNS = 2  # custom_id, row: the passthrough columns follow them
FORMATS = ("jsonl", "parquet")
TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_creation_1h_input_tokens",
    "cache_read_input_tokens",
)
_RESULT_COLUMNS = {
    "custom_id", "row", "text", "model", "stop_reason", "round", "batch_id", "reused_from", *TOKEN_COLUMNS,
}  # fmt: skip
_FAILURE_COLUMNS = ("result_type", "error_type", "message", "request_id", "retryable")
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def results_formats(value: str | Sequence[str]) -> tuple[str, ...]:
    """Return ``results_format`` as a tuple of formats, or raise naming the choices."""
    formats = (value,) if isinstance(value, str) else tuple(value)
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"results_format={value!r}: use 'jsonl', 'parquet' or a list of both")
    return formats


def require_pyarrow() -> None:
    """Raise ImportError naming the extra when pyarrow is not installed."""
    _pyarrow()


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ImportError(
            "results_format 'parquet' needs pyarrow: install the extra, pip install 'airflow-batch[parquet]'"
        ) from None
    return pyarrow


def arrow_type(schema: Mapping[str, Any], definitions: Mapping[str, Any] | None = None) -> pa.DataType:
    """Return the Arrow type of a JSON Schema node (see the module docstring)."""
    pa = _pyarrow()
    definitions = definitions or {}
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return arrow_type(definitions.get(name, {}), definitions)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        return arrow_type(options[0], definitions) if len(options) == 1 else pa.string()
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [one for one in kind if one != "null"]
        return arrow_type({**schema, "type": kinds[0]}, definitions) if len(kinds) == 1 else pa.string()
    enum = schema.get("enum")
    if enum and all(isinstance(value, str) for value in enum):
        return pa.dictionary(pa.int32(), pa.string())
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        return pa.struct([(name, arrow_type(sub, definitions)) for name, sub in properties.items()])
    if kind == "array":
        return pa.list_(arrow_type(schema.get("items", {}), definitions))
    simple = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}
    return simple.get(str(kind), pa.string())


def _json_text_columns(
    schema_fields: Mapping[str, pa.DataType],
    properties: Mapping[str, Any],
    definitions: Mapping[str, Any],
) -> set[str]:
    """Return the schema columns stored as JSON text: string columns whose schema is not a string."""
    import pyarrow as pa

    return {
        name
        for name, kind in schema_fields.items()
        if kind == pa.string() and not _is_string(properties.get(name, {}), definitions)
    }


def _is_string(schema: Mapping[str, Any], definitions: Mapping[str, Any]) -> bool:
    """Return whether a schema node only allows strings (or null)."""
    if "$ref" in schema:
        return _is_string(definitions.get(str(schema["$ref"]).rsplit("/", 1)[-1], {}), definitions)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        return len(options) == 1 and _is_string(options[0], definitions)
    kind = schema.get("type")
    kinds = [one for one in kind if one != "null"] if isinstance(kind, list) else [kind]
    return kinds == ["string"] or (
        kind is None and all(isinstance(v, str) for v in schema.get("enum") or [0])
    )


class _Writer:
    """Writes row groups of decoded rows to one Parquet file, its schema fixed by the first group.

    Columns are built a column at a time from the group's rows: a row field (``custom_id``...),
    a token count from ``usage``, or a property of ``output``. The properties are converted in
    one pass as a struct array and split into their columns (no per-row Python work).
    """

    def __init__(
        self,
        path: ObjectStoragePath | None,
        fixed: list[tuple[str, Any]],
        passthrough: list[str],
        *,
        usage: Sequence[str] = (),
        outputs: Sequence[str] = (),
        as_text: Sequence[str] = (),
        derived: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
    ) -> None:
        self.path = path
        self.fixed = fixed
        self.passthrough = passthrough
        self.usage = set(usage)
        self.outputs = list(outputs)
        self.as_text = set(as_text)
        self.derived = dict(derived or {})
        self.schema: Any = None

    def empty_schema(self, pa: Any) -> Any:
        """Return the schema of a table without rows: the columns known up front."""
        passthrough = [(name, pa.string()) for name in self.passthrough]
        return pa.schema(self.fixed[:_HEAD_COLUMNS] + passthrough + self.fixed[_HEAD_COLUMNS:])

    def table(self, groups: Iterable[list[dict[str, Any]]]) -> Any:
        """Return the rows of ``groups`` as one in-memory table with the columns the file would have."""
        pa = _pyarrow()
        tables = [self._table(group, pa) for group in groups]
        return pa.concat_tables(tables) if tables else self.empty_schema(pa).empty_table()

    def write(self, groups: Iterable[list[dict[str, Any]]]) -> int:
        pa = _pyarrow()
        written = 0
        assert self.path is not None, "a writer built for reading has no file"
        with atomic_writer(self.path) as out:
            writer = None
            try:
                for group in groups:
                    table = self._table(group, pa)
                    if writer is None:
                        writer = pa.parquet.ParquetWriter(out, table.schema)
                    writer.write_table(table)
                    written += len(group)
                if writer is None:  # no rows: an empty table with the columns known up front
                    writer = pa.parquet.ParquetWriter(out, self.empty_schema(pa))
            finally:
                if writer is not None:
                    writer.close()
        return written

    def _output_columns(self, rows: list[dict[str, Any]], pa: Any) -> dict[str, Any]:
        if not self.outputs:
            return {}
        kinds = dict(self.fixed)
        values = [row.get("output") for row in rows]
        if self.as_text:  # properties without a stated type: their JSON text
            values = [
                {
                    name: (
                        _encode(item).decode()
                        if name in self.as_text and not isinstance(item, (str, type(None)))
                        else item
                    )
                    for name, item in value.items()
                }
                if isinstance(value, dict)
                else value
                for value in values
            ]
        struct = pa.array(values, type=pa.struct([(name, kinds[name]) for name in self.outputs]))
        return dict(zip(self.outputs, struct.flatten(), strict=True))

    def _table(self, rows: list[dict[str, Any]], pa: Any) -> Any:
        columns: dict[str, Any] = {}
        head, rest = self.fixed[:_HEAD_COLUMNS], self.fixed[_HEAD_COLUMNS:]
        for name, kind in head:
            columns[name] = pa.array([row.get(name) for row in rows], type=kind)
        for name in self.passthrough:
            values = [row.get("input", {}).get(name) if row.get("input") else None for row in rows]
            kind = self.schema.field(name).type if self.schema is not None else None
            try:
                columns[name] = pa.array(values, type=kind)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                bad = next(
                    (
                        row.get("row")
                        for row, value in zip(rows, values, strict=True)
                        if value is not None and not _fits(pa, value, kind)
                    ),
                    None,
                )
                raise ValueError(
                    f"passthrough field {name!r}: the value at row {bad} does not fit the column type {kind} "
                    f"of earlier rows ({exc}); give the field one type in every record"
                ) from None
        outputs = self._output_columns(rows, pa)
        usages = [row.get("usage") or {} for row in rows] if self.usage else []
        for name, kind in rest:
            if name in outputs:
                columns[name] = outputs[name]
            elif name in self.usage:
                columns[name] = pa.array([usage.get(name, 0) for usage in usages], type=kind)
            elif name in self.derived:
                columns[name] = pa.array([self.derived[name](row) for row in rows], type=kind)
            else:
                columns[name] = pa.array([row.get(name) for row in rows], type=kind)
        table = pa.table(columns)
        if self.schema is None:
            self.schema = table.schema
        return table.select([field.name for field in self.schema])


def _reused_label(row: Mapping[str, Any]) -> str | None:
    """Return where a reused answer came from: the batch id, or "canary"; None for the job's own."""
    source = row.get("reused_from")
    if not isinstance(source, Mapping):
        return None
    return "canary" if source.get("canary") else source.get("batch_id")


def _fits(pa: Any, value: Any, kind: Any) -> bool:
    try:
        pa.array([value], type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True


def _groups(path: ObjectStoragePath) -> Iterator[list[dict[str, Any]]]:
    """Yield the rows of a JSONL file a row group at a time.

    The cyclic garbage collector is paused while a group is decoded (see
    :mod:`airflow_batch.memory`): it made up most of the time of writing a table.
    """
    lines = iter_jsonl_lines(path)
    while True:
        with paused_gc():
            group = [_decode(line) for line in itertools.islice(lines, ROW_GROUP)]
        if not group:
            return
        yield group


def write_tables(
    results_jsonl: ObjectStoragePath,
    failures_jsonl: ObjectStoragePath,
    results_parquet: ObjectStoragePath,
    failures_parquet: ObjectStoragePath,
    *,
    output_schema: Mapping[str, Any] | None,
    passthrough: Sequence[str],
) -> None:
    """Write the Parquet tables of the merged JSONL files (see the module docstring)."""
    results, failures = table_layouts(
        results_parquet, failures_parquet, output_schema=output_schema, passthrough=passthrough
    )
    results.write(_groups(results_jsonl))
    failures.write(_groups(failures_jsonl))


def read_flat_table(
    jsonl: ObjectStoragePath,
    *,
    which: str,
    output_schema: Mapping[str, Any] | None,
    passthrough: Sequence[str],
) -> Any:
    """Return the rows of a merged JSONL file (``which``: results or failures) as the Parquet
    table of the same name would hold them: one shape whatever the job's results format."""
    results, failures = table_layouts(None, None, output_schema=output_schema, passthrough=passthrough)
    return (results if which == "results" else failures).table(_groups(jsonl))


def table_layouts(
    results_parquet: ObjectStoragePath | None,
    failures_parquet: ObjectStoragePath | None,
    *,
    output_schema: Mapping[str, Any] | None,
    passthrough: Sequence[str],
) -> tuple[_Writer, _Writer]:
    """Return the writers of the results and failures tables (columns as the module docstring says)."""
    pa = _pyarrow()
    clash = sorted(set(passthrough) & (_RESULT_COLUMNS | set(_FAILURE_COLUMNS)))
    if clash:
        raise ValueError(
            f"passthrough field(s) {clash} would shadow row columns of the same name; rename them"
        )
    outputs: dict[str, Any] = {}
    as_text: set[str] = set()
    if output_schema is not None:
        definitions = {**output_schema.get("definitions", {}), **output_schema.get("$defs", {})}
        outputs = {
            name: arrow_type(sub, definitions) for name, sub in output_schema.get("properties", {}).items()
        }
        clash = sorted(set(outputs) & (_RESULT_COLUMNS | set(passthrough)))
        if clash:
            raise ValueError(
                f"output schema propert(ies) {clash} clash with other columns of results.parquet"
            )
        as_text = _json_text_columns(outputs, output_schema.get("properties", {}), definitions)
    head = [("custom_id", pa.string()), ("row", pa.int64())]
    tail = [
        ("model", pa.string()),
        ("stop_reason", pa.string()),
        *[(name, pa.int64()) for name in TOKEN_COLUMNS],
        ("round", pa.int64()),
        ("batch_id", pa.string()),
        ("reused_from", pa.string()),
    ]
    body = list(outputs.items()) if outputs else [("text", pa.string())]

    results = _Writer(
        results_parquet,
        head + body + tail,
        list(passthrough),
        usage=TOKEN_COLUMNS,
        outputs=list(outputs),
        as_text=sorted(as_text),
        derived={"reused_from": _reused_label},
    )
    failure_fixed = [
        *head,
        ("result_type", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("request_id", pa.string()),
        ("retryable", pa.bool_()),
        ("round", pa.int64()),
        ("batch_id", pa.string()),
    ]
    return results, _Writer(failures_parquet, failure_fixed, list(passthrough))
