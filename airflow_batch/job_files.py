"""Reading a job's files as if a stranger wrote them: the three answers a file that cannot be used gets.

What is read back from a job folder may come from another version of the package, a process
that died mid-write on a store without atomic renames, a person with an editor. A file that
cannot be used is one of three answers, each naming the file and what to do:

- :class:`~airflow_batch.exceptions.JobFileMissingError`: it is not there (a ``FileNotFoundError``);
- :class:`~airflow_batch.exceptions.JobFileUnreadableError`: the store would not give it (I/O,
  permissions; an ``OSError``);
- :class:`~airflow_batch.exceptions.JobFileDamagedError`: it is there but not what it should be
  (not JSON, another shape, an unknown version; a ``ValueError``).

:class:`~airflow_batch.folder.JobFolder` reads every job file through these.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import msgspec

from airflow_batch.exceptions import (
    JobFileDamagedError,
    JobFileMissingError,
    JobFileUnreadableError,
)
from airflow_batch.storage import read_json

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


def read_document(path: ObjectStoragePath, what: str, fix: str) -> Any:
    """Return the JSON document at ``path``, or raise the error that says why it cannot be had.

    ``what`` names the file for a person ("the ledger of round 2"), ``fix`` what to do about it.
    """
    try:
        return read_json(path)
    except FileNotFoundError as error:
        raise JobFileMissingError(f"{what} is missing: no file at {path}. {fix}", path=str(path)) from error
    except OSError as error:
        raise JobFileUnreadableError(
            f"{what} at {path} could not be read ({type(error).__name__}: {error}): check that this "
            "worker can reach the store and has read access to the file, then run the task again",
            path=str(path),
        ) from error
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        raise damaged(path, what, f"it is not JSON ({error})", fix) from error


def damaged(path: ObjectStoragePath | str, what: str, problem: str, fix: str) -> JobFileDamagedError:
    """Return the error of a file that is there but not what it should be."""
    return JobFileDamagedError(f"{what} at {path} is damaged: {problem}. {fix}", path=str(path))


def read_object(path: ObjectStoragePath, what: str, fix: str) -> dict[str, Any]:
    """Return the JSON object at ``path`` (see :func:`read_document`); any other JSON value is damage."""
    document = read_document(path, what, fix)
    if not isinstance(document, dict):
        raise damaged(path, what, f"expected a JSON object, found {type(document).__name__}", fix)
    return document


def remove_tree(path: ObjectStoragePath) -> None:
    """Delete a folder and everything in it (nothing when it is not there)."""
    with contextlib.suppress(FileNotFoundError):
        if path.exists():
            path.rmdir(recursive=True)
