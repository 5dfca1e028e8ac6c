"""A round's own files: its ledger (fenced), its manifest, the wait's progress and landed record, its refusal.

A mixin of :class:`~airflow_batch.folder.JobFolder`, the one class callers use; the rows of a
round (chunks going in, batch parts coming out) are in :mod:`airflow_batch.part_files`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_batch import layout
from airflow_batch.exceptions import JobFileMissingError
from airflow_batch.job_files import damaged, read_object
from airflow_batch.manifest import LEDGER_VERSION, MANIFEST_VERSION
from airflow_batch.storage import replace_json_fenced, write_json

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.manifest import RoundManifest


class RoundFiles:
    """The files of a job's rounds that are not rows: paths, states, reads and writes."""

    root: ObjectStoragePath

    # -- paths ------------------------------------------------------------------------------

    def round_dir(self, round_number: int) -> ObjectStoragePath:
        """Return the folder of one round (0 is the first submission, 1.. are retry rounds)."""
        return layout.round_dir(self.root, round_number)

    def landed_path(self, round_number: int) -> ObjectStoragePath:
        """Return the file the wait's landing rewrites with the rows of the round landed so far."""
        return layout.landed_path(self.root, round_number)

    def ledger_path(self, round_number: int) -> ObjectStoragePath:
        """Return the ledger file of a round."""
        return layout.ledger_path(self.root, round_number)

    def retry_requests_path(self, round_number: int) -> ObjectStoragePath:
        """Return the requests of a gathered round's retryable failures, as the next round sends them."""
        return layout.retry_requests_path(self.root, round_number)

    def refusal_path(self, round_number: int) -> ObjectStoragePath:
        """Return the file recording why a round was refused before any spend."""
        return layout.refusal_path(self.root, round_number)

    def progress_path(self, round_number: int) -> ObjectStoragePath:
        """Return the file the wait rewrites with the round's latest counts."""
        return layout.progress_path(self.root, round_number)

    def round_manifest_path(self, round_number: int) -> ObjectStoragePath:
        """Return the manifest file a gather writes for its round."""
        return layout.round_manifest_path(self.root, round_number)

    # -- states -----------------------------------------------------------------------------

    def has_round(self, round_number: int) -> bool:
        """Return whether the round's folder exists (its submit has started)."""
        return bool(self.round_dir(round_number).exists())

    def has_ledger(self, round_number: int) -> bool:
        """Return whether the round has a ledger (it was started)."""
        return bool(self.ledger_path(round_number).exists())

    def has_refusal(self, round_number: int) -> bool:
        """Return whether the round was refused before any spend (it has a refusal record)."""
        return bool(self.refusal_path(round_number).exists())

    # -- the ledger of a round (fenced) -----------------------------------------------------

    def read_ledger(self, round_number: int) -> dict[str, Any] | None:
        """Return the stored ledger document of a round, or None when the round has none yet."""
        path = self.ledger_path(round_number)
        what = f"the ledger of round {round_number} of {self.root}"
        fix = (
            "It records which batch carries each chunk: restore it (a backup, or an archived "
            "ledger.*.json beside it); moved aside, the next submit rebuilds it from Airflow's "
            "task_state_store where that holds the round, else submits the round again"
        )
        try:
            document = read_object(path, what, fix)
        except JobFileMissingError:
            return None

        version = document.get("version", LEDGER_VERSION)
        if version != LEDGER_VERSION:
            raise damaged(path, what, f"version {version!r} is not {LEDGER_VERSION}", fix)
        missing = [key for key in ("job_dir", "round", "fingerprint") if key not in document]
        if missing:
            raise damaged(path, what, f"it lacks {', '.join(missing)}", fix)
        return document

    def replace_ledger(
        self, round_number: int, document: Mapping[str, Any], holds: Callable[[Any | None], bool]
    ) -> None:
        """Write a round's ledger only if ``holds(stored)`` is true of the one stored (a fenced write).

        Raises :class:`~airflow_batch.storage.FenceLost` when another writer came first.
        """
        replace_json_fenced(self.ledger_path(round_number), document, holds)

    def archive_ledger(self, round_number: int) -> ObjectStoragePath | None:
        """Rename a round's ledger to ``ledger.<timestamp>.json``; return the new path (None: none)."""
        path = self.ledger_path(round_number)
        if not path.exists():
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        archived = path.parent / f"ledger.{stamp}.json"
        path.rename(archived)
        return archived

    # -- round manifests --------------------------------------------------------------------

    def read_round_manifest(self, round_number: int) -> RoundManifest:
        """Return the manifest the gather of a round wrote."""
        path = self.round_manifest_path(round_number)
        what = f"the manifest of round {round_number} of {self.root}"
        fix = (
            f"Clear the gather of round {round_number} so it writes the manifest again from the landed parts"
        )
        document = read_object(path, what, fix)
        version = document.get("version", MANIFEST_VERSION)
        if version != MANIFEST_VERSION:
            raise damaged(path, what, f"version {version!r} is not {MANIFEST_VERSION}", fix)
        if document.get("round") != round_number:
            raise damaged(path, what, f"it names round {document.get('round')!r}", fix)
        return document  # type: ignore[return-value]

    def write_round_manifest(self, manifest: RoundManifest) -> None:
        """Store the manifest of a gathered round (its ``round`` says which)."""
        write_json(self.round_manifest_path(manifest["round"]), manifest)

    def read_rounds(self) -> list[RoundManifest]:
        """Return the manifests of the job's gathered rounds, round 0 first, up to the first missing."""
        rounds: list[RoundManifest] = []
        while True:
            try:
                rounds.append(self.read_round_manifest(len(rounds)))
            except JobFileMissingError:
                return rounds

    # -- progress, refusals -----------------------------------------------------------------

    def read_progress(self, round_number: int) -> dict[str, Any]:
        """Return the wait's latest progress document of a round."""
        path = self.progress_path(round_number)
        what = f"the progress of round {round_number} of {self.root}"
        fix = "The wait rewrites it at its next poll; nothing needs to be done"
        return read_object(path, what, fix)

    def read_landed(self, round_number: int) -> dict[str, Any] | None:
        """Return the rows of a round landed so far by the wait (``landed.json``), None before any."""
        path = self.landed_path(round_number)
        if not path.exists():
            return None
        what = f"the rows landed so far of round {round_number} of {self.root}"
        return read_object(path, what, "The wait rewrites it at its next landing; nothing needs to be done")

    def write_landed(self, round_number: int, document: Mapping[str, Any]) -> None:
        """Replace the record of the rows of a round landed so far."""
        write_json(self.landed_path(round_number), document)

    def write_progress(self, round_number: int, document: Mapping[str, Any]) -> None:
        """Replace the progress document of a round."""
        write_json(self.progress_path(round_number), document)

    def read_refusal(self, round_number: int) -> dict[str, Any] | None:
        """Return why a round was refused before any spend, or None when it was not refused."""
        path = self.refusal_path(round_number)
        what = f"the refusal of round {round_number} of {self.root}"
        fix = f"Delete it and clear the submit of round {round_number} (it records a new one if it refuses)"
        try:
            document = read_object(path, what, fix)
        except JobFileMissingError:
            return None
        if not isinstance(document.get("reason"), str):
            raise damaged(path, what, "it has no reason", fix)
        return document

    def write_refusal(self, round_number: int, record: Mapping[str, Any]) -> None:
        """Record why a round was refused before any spend."""
        write_json(self.refusal_path(round_number), record)
