"""The merged results and failures as Parquet tables with typed columns (``airflow-batch[parquet]``).

``results.parquet`` columns, in order: ``custom_id``, ``row``, the passthrough fields (the
record's ``input`` fields, each its own column), each top-level property of the output schema
as its own column (or ``text`` when the job has no schema), ``model``, ``stop_reason``, the
token columns, ``round``, ``batch_id``, ``reused_from`` (null for an answer of the job's own
batches; else the batch it was reused from, or ``canary`` for an answer the canary got).
JSON Schema types map to Arrow types: string -> string, integer -> int64, number -> float64,
boolean -> bool, an enum of strings -> a dictionary-encoded string, an object -> a struct of its
properties, an array -> a list of its items, ``anyOf`` of one type and null -> that type
(nullable).

``failures.parquet``: ``custom_id``, ``row``, the passthrough fields, ``result_type``,
``error_type``, ``message``, ``request_id``, ``retryable``, ``round``, ``batch_id``.

The columns of a row's own fields take their names, types and nullability from the row
contract (:mod:`airflow_batch.rows.contract`): a field it declares never null is a ``not null``
column (a row read back that breaks it is written anyway, the column then nullable, with a
warning naming the row).

Whatever the job accepted is written: a column that cannot be typed holds the JSON text of its
values (strings quoted, null as null) instead, and each such column is named with the reason in
what :func:`write_tables` returns (the job manifest's ``json_text_columns``). That is a schema
property whose schema states no single type (no ``type``, several types, an array without
``items``, an object without properties), and any column whose values do not fit the type it
was given: an integer above int64, a passthrough field whose type changes between rows (its
type is taken from the first row group) or that holds JSON objects (whose keys may differ from
row to row, which a struct typed from the first rows would drop). Such a column is found
while writing; the file is then written again with that column as JSON text, so a job pays
an extra pass for each such column and nothing when every value fits.

``read_table`` builds the same table from the JSONL files when finalize wrote no Parquet
(:func:`read_flat_table`: the same writer, into a temporary file), so a reader sees one shape
whatever the job's ``results_format``.

Tables are written from the merged JSONL files a row group at a time, so memory holds one row
group whatever the job's size.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from airflow_batch.memory import paused_gc
from airflow_batch.rows.contract import (
    FAILURE_TAIL,
    RESULT_HEAD,
    RESULT_TAIL,
    FailureRow,
    ResultRow,
    reserved_columns,
    table_columns,
)
from airflow_batch.storage import as_path, atomic_writer, iter_jsonl_lines

if TYPE_CHECKING:
    import pyarrow as pa
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

ROW_GROUP = 20_000
FORMATS = ("jsonl", "parquet")
#: The columns of a result row's own fields (the rest are passthrough fields and answer properties).
_RESULT_COLUMNS = {column.name for column in table_columns(ResultRow, (*RESULT_HEAD, "text", *RESULT_TAIL))}
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


class _Untyped(Exception):
    """A schema node that states no single Arrow type; its column holds JSON text."""


def arrow_type(schema: Mapping[str, Any], definitions: Mapping[str, Any] | None = None) -> pa.DataType | None:
    """Return the Arrow type of a JSON Schema node, or None when it states none (JSON text; see above)."""
    try:
        return _arrow_type(schema, definitions or {}, "$")
    except _Untyped:
        return None


def untyped_reason(
    schema: Mapping[str, Any], definitions: Mapping[str, Any] | None = None, where: str = "$"
) -> str | None:
    """Return why a JSON Schema node gives no Arrow type (naming the part of it), or None if it gives one."""
    try:
        _arrow_type(schema, definitions or {}, where)
    except _Untyped as untyped:
        return str(untyped)
    return None


def _arrow_type(schema: Mapping[str, Any], definitions: Mapping[str, Any], where: str) -> pa.DataType:
    pa = _pyarrow()
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return _arrow_type(definitions.get(name, {}), definitions, where)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        if len(options) != 1:
            raise _Untyped(f"{where}: anyOf allows {len(options)} types")
        return _arrow_type(options[0], definitions, where)
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [one for one in kind if one != "null"]
        if len(kinds) != 1:
            raise _Untyped(f"{where}: type allows {kinds}")
        return _arrow_type({**schema, "type": kinds[0]}, definitions, where)
    enum = schema.get("enum")
    if enum and all(isinstance(value, str) for value in enum):
        return pa.dictionary(pa.int32(), pa.string())
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        if not properties:
            raise _Untyped(f"{where}: an object without properties")
        return pa.struct(
            [(name, _arrow_type(sub, definitions, f"{where}.{name}")) for name, sub in properties.items()]
        )
    if kind == "array":
        if not schema.get("items"):
            raise _Untyped(f"{where}: an array without items")
        return pa.list_(_arrow_type(schema["items"], definitions, f"{where}[]"))
    simple = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}
    if kind not in simple:
        raise _Untyped(f"{where}: no type" if kind is None else f"{where}: type {kind!r}")
    return simple[kind]


def json_text(value: Any) -> str | None:
    """Return a value's JSON text for a JSON-text column (null stays null); never fails on decoded JSON."""
    if value is None:
        return None
    try:
        return _encode(value).decode()
    except (TypeError, ValueError, OverflowError):  # a lone surrogate: escaped, as JSON allows
        return json.dumps(value, ensure_ascii=True)


class _Demoted(Exception):
    """A column whose values do not fit its type: the file is written again with it as JSON text."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"column {column!r}: {reason}")
        self.column = column
        self.reason = reason


#: How a row gives a column's value, by where the column comes from.
_SOURCES: dict[str, Callable[[dict[str, Any], str], Any]] = {
    "row": lambda row, name: row.get(name),
    "input": lambda row, name: _field(row.get("input"), name),
    "output": lambda row, name: _field(row.get("output"), name),
    "usage": lambda row, name: (row.get("usage") or {}).get(name, 0),
}


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None


class _Column(NamedTuple):
    """A column of a table: its name, its Arrow type (None: a passthrough field's, taken from
    the first row group) and where a row keeps its value (a key of ``_SOURCES``, or a function)."""

    name: str
    kind: pa.DataType | None
    source: str | Callable[[dict[str, Any]], Any] = "row"
    nullable: bool = True


class _Writer:
    """Writes row groups of decoded rows to one Parquet file, its schema fixed by the first group.

    A column whose values do not fit its type is turned into a JSON-text column and the file is
    written again from the start (``groups`` is called once per pass); :attr:`as_text` names
    every JSON-text column with the reason. A column the row contract says is never null that
    holds a null is written again as nullable, with a warning naming the row: the table is
    written after the spend, so a row that breaks the contract is reported, never fatal.
    """

    def __init__(self, path: ObjectStoragePath, columns: list[_Column], as_text: Mapping[str, str]) -> None:
        self.path = path
        self.columns = columns
        self.as_text = dict(as_text)
        self.nulls: set[str] = set()  # required columns found holding a null
        self.schema: Any = None

    def write(self, groups: Callable[[], Iterable[list[dict[str, Any]]]]) -> dict[str, str]:
        """Write the table; return its JSON-text columns, each with the reason."""
        while True:
            try:
                self._write_once(groups())
            except _Demoted as demoted:
                log.warning("%s: %s; its values are written as JSON text", self.path.name, demoted)
                self.as_text[demoted.column] = demoted.reason
                self.schema = None
            except _NullInRequired as null:
                log.warning("%s: %s; the column is written as nullable", self.path.name, null)
                self.nulls.add(null.column)
                self.schema = None
            else:
                return self.as_text

    def _write_once(self, groups: Iterable[list[dict[str, Any]]]) -> None:
        pa = _pyarrow()
        with atomic_writer(self.path) as out:
            writer = None
            try:
                for group in groups:
                    table = self._table(group, pa)
                    if writer is None:
                        writer = pa.parquet.ParquetWriter(out, table.schema)
                    writer.write_table(table)
                if writer is None:  # no rows: an empty table with the columns known up front
                    fields = [
                        pa.field(
                            column.name,
                            pa.string() if self._text(column) else column.kind,
                            nullable=self._nullable(column),
                        )
                        for column in self.columns
                    ]
                    writer = pa.parquet.ParquetWriter(out, pa.schema(fields))
            finally:
                if writer is not None:
                    writer.close()

    def _text(self, column: _Column) -> bool:
        return column.kind is None or column.name in self.as_text

    def _nullable(self, column: _Column) -> bool:
        return column.nullable or column.name in self.nulls

    def _table(self, rows: list[dict[str, Any]], pa: Any) -> Any:
        outputs = self._typed_outputs(rows, pa)
        columns: dict[str, Any] = {}
        for column in self.columns:
            source = column.source
            if column.name in outputs:
                columns[column.name] = outputs[column.name]
                continue
            if callable(source):
                values = [source(row) for row in rows]
            else:
                get, name = _SOURCES[source], column.name
                values = [get(row, name) for row in rows]
            columns[column.name] = self._array(column, values, rows, pa)
        fields = []
        for column in self.columns:
            array = columns[column.name]
            nullable = self._nullable(column)
            if not nullable and array.null_count:
                raise _NullInRequired(column.name, rows[array.is_null().index(True).as_py()].get("row"))
            fields.append(pa.field(column.name, array.type, nullable=nullable))
        table = pa.Table.from_arrays(list(columns.values()), schema=pa.schema(fields))
        if self.schema is None:
            self.schema = table.schema
        return table

    def _typed_outputs(self, rows: list[dict[str, Any]], pa: Any) -> dict[str, Any]:
        """Return the typed output columns converted in one pass, as a struct array split into its
        columns (a third faster than a column at a time); {} when a value does not fit, so that
        the columns are converted one by one and the one that does not fit is named."""
        typed = [
            c
            for c in self.columns
            if c.source == "output" and c.kind is not None and c.name not in self.as_text
        ]
        if not typed:
            return {}
        struct = pa.struct([(column.name, column.kind) for column in typed])
        try:
            array = pa.array([row.get("output") for row in rows], type=struct)
        except _ARROW_ERRORS:
            return {}
        return dict(zip([column.name for column in typed], array.flatten(), strict=True))

    def _array(self, column: _Column, values: list[Any], rows: list[dict[str, Any]], pa: Any) -> Any:
        name = column.name
        if name in self.as_text:
            return pa.array([json_text(value) for value in values], type=pa.string())
        # A passthrough field takes the type of its values in the first row group.
        kind = column.kind if self.schema is None else self.schema.field(name).type
        try:
            array = pa.array(values, type=kind)
        except _ARROW_ERRORS as exc:
            raise _Demoted(name, _misfit(pa, values, rows, kind, exc)) from None
        if kind is None and _has_struct(pa, array.type):
            # Objects of a later row group with other keys would lose them silently in a struct
            # typed from the first group (and Parquet cannot hold an empty one).
            raise _Demoted(name, "its values are JSON objects, whose keys may differ between rows")
        return array


class _NullInRequired(Exception):
    """A null in a column the row contract declares never null: written again as nullable."""

    def __init__(self, column: str, row: Any) -> None:
        super().__init__(f"column {column!r} is never null by the row contract, but row {row} holds a null")
        self.column = column


_ARROW_ERRORS: tuple[type[BaseException], ...] = (TypeError, ValueError, OverflowError, UnicodeError)
"""What pyarrow raises for a value that does not fit a type (ArrowInvalid and ArrowTypeError
are ValueError and TypeError subclasses)."""


def _has_struct(pa: Any, kind: Any) -> bool:
    """Return whether an Arrow type is or holds a struct."""
    if pa.types.is_struct(kind):
        return True
    return bool(pa.types.is_list(kind) or pa.types.is_large_list(kind)) and _has_struct(pa, kind.value_type)


def _misfit(pa: Any, values: list[Any], rows: list[dict[str, Any]], kind: Any, exc: BaseException) -> str:
    """Return which row's value does not fit ``kind`` (None: the group's inferred type), and why."""
    for row, value in zip(rows, values, strict=True):
        if value is None:
            continue
        try:
            pa.array([value], type=kind)
        except _ARROW_ERRORS as single:
            return f"the value at row {row.get('row')} does not fit {kind} ({single})"
    if kind is None or kind == pa.null():
        return f"its values have more than one type ({exc})"
    return f"a value does not fit {kind} ({exc})"


def _reused_label(row: Mapping[str, Any]) -> str | None:
    """Return where a reused answer came from: the batch id, or "canary"; None for the job's own."""
    source = row.get("reused_from")
    if not isinstance(source, Mapping):
        return None
    return "canary" if source.get("canary") else source.get("batch_id")


#: Columns whose value is derived from the row rather than read from a field of the same name.
_DERIVED: dict[str, Callable[[dict[str, Any]], Any]] = {"reused_from": _reused_label}


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


def column_clashes(passthrough: Sequence[str], properties: Iterable[str] = ()) -> str | None:
    """Return why passthrough fields or output schema properties cannot be columns of the tables, or None.

    Both become columns beside the row's own (``model``, ``text``, ``round``...), so a name used
    twice would make one of them vanish. Checked when the DAG is parsed (the submit operator) and
    again when the tables are written.
    """
    reserved = reserved_columns()
    clash = sorted(set(passthrough) & reserved)
    if clash:
        return (
            f"passthrough field(s) {clash} have the name of a column every result or failure row has "
            f"({', '.join(sorted(reserved))}); rename the record field(s) before the job, or leave them "
            "out of passthrough_fields"
        )
    clash = sorted(set(properties) & (_RESULT_COLUMNS | set(passthrough)))
    if clash:
        return (
            f"output schema propert(ies) {clash} have the name of a result column or a passthrough field "
            f"({', '.join(sorted(_RESULT_COLUMNS | set(passthrough)))}); rename them in the schema"
        )
    return None


def _columns(pa: Any, struct: type[msgspec.Struct], names: tuple[str, ...]) -> list[_Column]:
    """Return the table columns of row fields, typed by the row contract."""
    arrow = {str: pa.string(), int: pa.int64(), bool: pa.bool_()}
    return [
        _Column(column.name, arrow[column.kind], _DERIVED.get(column.name, column.source), column.nullable)
        for column in table_columns(struct, names)
    ]


def write_tables(
    results_jsonl: ObjectStoragePath,
    failures_jsonl: ObjectStoragePath,
    results_parquet: ObjectStoragePath,
    failures_parquet: ObjectStoragePath,
    *,
    output_schema: Mapping[str, Any] | None,
    passthrough: Sequence[str],
) -> dict[str, dict[str, str]]:
    """Write the Parquet tables of the merged JSONL files (see the module docstring).

    Return the JSON-text columns of each table that has any (``{"results": {column: reason}}``).
    """
    pa = _pyarrow()
    properties: Mapping[str, Any] = (output_schema or {}).get("properties") or {}
    clash = column_clashes(passthrough, properties)
    if clash:
        raise ValueError(clash)
    body = _columns(pa, ResultRow, ("text",))
    as_text: dict[str, str] = {}
    if output_schema is not None:
        definitions = {**output_schema.get("definitions", {}), **output_schema.get("$defs", {})}
        body = [_Column(name, arrow_type(sub, definitions), "output") for name, sub in properties.items()]
        for name, sub in properties.items():
            reason = untyped_reason(sub, definitions, name)
            if reason is not None:
                as_text[name] = f"the schema states no single type: {reason}"
    head = [
        *_columns(pa, ResultRow, RESULT_HEAD),
        *[_Column(name, None, "input") for name in passthrough],
    ]
    failure_columns = [
        *_columns(pa, FailureRow, RESULT_HEAD),
        *[_Column(name, None, "input") for name in passthrough],
        *_columns(pa, FailureRow, FAILURE_TAIL),
    ]
    result_columns = [*head, *body, *_columns(pa, ResultRow, RESULT_TAIL)]
    written = {
        "results": _Writer(results_parquet, result_columns, as_text).write(lambda: _groups(results_jsonl)),
        "failures": _Writer(failures_parquet, failure_columns, {}).write(lambda: _groups(failures_jsonl)),
    }
    return {table: columns for table, columns in written.items() if columns}


def read_flat_table(
    jsonl: ObjectStoragePath,
    *,
    which: str,
    output_schema: Mapping[str, Any] | None,
    passthrough: Sequence[str],
) -> Any:
    """Return the rows of a merged JSONL file (``which``: results or failures) as the Parquet table of
    the same name would hold them: written by :func:`write_tables` into a temporary folder, read back."""
    import tempfile

    pa = _pyarrow()
    with tempfile.TemporaryDirectory(prefix="airflow-batch-table-") as folder:
        base = as_path(folder)
        empty = base / "empty.jsonl"
        empty.write_bytes(b"")
        sources = (
            {"results": jsonl, "failures": empty}
            if which == "results"
            else {"results": empty, "failures": jsonl}
        )
        targets = {name: base / f"{name}.parquet" for name in sources}
        write_tables(
            sources["results"],
            sources["failures"],
            targets["results"],
            targets["failures"],
            output_schema=output_schema,
            passthrough=passthrough,
        )
        with targets[which].open("rb") as handle:
            return pa.parquet.read_table(handle)
