"""Publish a finalized job's files to a stable folder (``publish_path``), atomically as a whole.

Layout of a published folder::

    {publish_path}/manifest.json                   the pointer: the current version's job manifest
    {publish_path}/versions/{version}/results.jsonl, failures.jsonl[, *.parquet], manifest.json

Why a versioned folder and a pointer. Object stores rename nothing atomically but a single
object, and a reader may read the folder at any moment. So every file of a publish goes into a
new ``versions/{version}`` folder no reader knows yet, and only then the small ``manifest.json``
at the top is replaced (one atomic write) by the job manifest whose paths point into that
folder. A reader that goes through ``manifest.json`` (:func:`airflow_batch.results.job_manifest`
does) therefore sees one complete job's files, the new one's or the previous one's, never a mix,
and the manifest names which (``job_dir``, ``finalized_at``, ``published_version``). A publish
killed at any point leaves the previous version current. A version holds only the files of its
own job, so a ``results.parquet`` of an earlier job cannot stand beside a manifest of a job
without one. The previous version is kept (a reader may still be reading it); older ones are
deleted after the switch.

Who publishes. The pointer records its publisher (the DAG and the finalize task): a publish by
another publisher is refused (:class:`PublishConflictError`) instead of replacing its files.
The same DAG publishing again (a re-run of the same date) replaces its own version.

Where. A templated ``publish_path`` is checked once rendered: no ``.`` or ``..`` segment, and
it stays under the literal part of the template (:func:`check_publish_path`).
"""

from __future__ import annotations

import contextlib
import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_batch import layout
from airflow_batch.exceptions import PublishConflictError
from airflow_batch.storage import as_path, copy_file, read_json, write_json

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.manifest import JobManifest

#: The job manifest's keys naming a file that is published.
PUBLISHED_FILES = ("results_path", "failures_path", "results_parquet_path", "failures_parquet_path")
#: Files an earlier layout published at the top of the folder, beside its manifest.
_LEGACY_FILES = ("results.jsonl", "failures.jsonl", "results.parquet", "failures.parquet")
_TEMPLATE = re.compile(r"{{|{%")


def publish_root(publish_path: str | None) -> str | None:
    """Return the literal part of a templated ``publish_path`` (before its first template), or None."""
    if not publish_path:
        return None
    found = _TEMPLATE.search(publish_path)
    return publish_path[: found.start()] if found else None


def check_publish_path(rendered: str, root: str | None, name: str) -> None:
    """Refuse a rendered ``publish_path`` that climbs (a ``.`` or ``..`` segment) or leaves its root.

    ``root`` is :func:`publish_root` of the template: the rendered folder must lie under it.
    """
    path = rendered.split("://", 1)[-1]
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError(
            f"{name}={rendered!r} has a '.' or '..' segment: a published folder must not climb out of "
            "its root. Render the template to a plain path (check the values it uses)."
        )
    if root is not None and not rendered.startswith(root):
        raise ValueError(f"{name}={rendered!r} is not under {root!r}, the literal part of its template")


def publisher(dag_id: str, task_id: str) -> str:
    """Return the name a published folder records of who publishes there."""
    return f"{dag_id}.{task_id}"


def publish(job_manifest: JobManifest, target: ObjectStoragePath, owner: str) -> str:
    """Publish the job's final files to ``target`` as a new version, then switch its manifest.

    Returns the version: the files are in :func:`airflow_batch.layout.published_version_dir`.

    Raises :class:`PublishConflictError`, before copying anything, when ``target`` is another
    publisher's.
    """
    pointer = layout.published_manifest_path(target)
    previous = _read_pointer(pointer)
    recorded = previous.get("published_by") if previous else None
    if recorded is not None and recorded != owner:
        raise PublishConflictError(
            f"publish_path {target} is published by {recorded!r}, not by {owner!r}: nothing was replaced. "
            f"Give this job a folder of its own (e.g. with the DAG id in publish_path); its files are in "
            f"{job_manifest['job_dir']}."
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    version = f"{stamp}-{uuid.uuid4().hex[:8]}"  # sorts by time: older versions sort first
    folder = layout.published_version_dir(target, version)
    copies: dict[str, Any] = dict.fromkeys(PUBLISHED_FILES)
    for key in PUBLISHED_FILES:
        source = job_manifest.get(key)
        if isinstance(source, str) and source:
            copy = folder / as_path(source).name
            copy_file(as_path(source), copy)
            copies[key] = str(copy)
    published = {
        **job_manifest,
        **copies,
        "published_path": str(target),
        "published_version": version,
        "published_by": owner,
    }
    write_json(
        layout.published_manifest_path(folder), {**published, "manifest_path": str(folder / "manifest.json")}
    )
    write_json(pointer, {**published, "manifest_path": str(pointer)})  # the switch
    _remove_old(target, previous.get("published_version") if previous else None)
    return version


def _read_pointer(pointer: ObjectStoragePath) -> dict[str, Any] | None:
    if not pointer.exists():
        return None
    try:
        data = read_json(pointer)
    except ValueError:
        return None  # damaged: it names no publisher, and the switch replaces it
    return data if isinstance(data, dict) else None


def _remove_old(target: ObjectStoragePath, previous: str | None) -> None:
    """Delete versions older than the previous one, and files an earlier layout left at the top.

    The previous version stays: a reader may be reading it. A version newer than the previous
    one that is not current belongs to a publish still running: it stays too.
    """
    folder = target / layout.PUBLISHED_VERSIONS
    with contextlib.suppress(FileNotFoundError):
        for version in folder.iterdir():
            if previous is not None and version.name < previous:
                with contextlib.suppress(Exception):
                    version.rmdir(recursive=True)
    for name in _LEGACY_FILES:
        with contextlib.suppress(Exception):
            legacy = target / name
            if legacy.exists():
                legacy.unlink()
