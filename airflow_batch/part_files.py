"""The files that hold a round's rows: the chunks a submit installs, the parts a gather lands.

A mixin of :class:`~airflow_batch.folder.JobFolder`, the one class callers use. A chunk (its
prepared requests, its inputs twin, the shared prompts it references) is staged privately and
installed by renames; a batch's parts appear whole or not at all, and its stats sidecar, written
last, marks it as landed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING

from airflow_batch import layout
from airflow_batch.exceptions import JobFileMissingError
from airflow_batch.job_files import damaged, read_object, remove_tree
from airflow_batch.storage import atomic_writer, iter_jsonl_lines, write_json

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_batch.gather.stats import BatchGatherStats


class PartFiles:
    """The row files of a job's rounds: paths, states, reads and writes."""

    root: ObjectStoragePath

    # -- paths ------------------------------------------------------------------------------

    def staging_dir(self, round_number: int, token: str) -> ObjectStoragePath:
        """Return a private folder where a submit prepares a round's chunks before installing them."""
        return layout.round_dir(self.root, round_number) / f".staging-{token}"

    def chunks_dir(self, round_number: int) -> ObjectStoragePath:
        """Return the folder of a round's prepared chunks."""
        return layout.chunks_dir(self.root, round_number)

    def inputs_dir(self, round_number: int) -> ObjectStoragePath:
        """Return the folder of the inputs twins of a round's chunks."""
        return layout.inputs_dir(self.root, round_number)

    def chunk_path(self, round_number: int, chunk: int) -> ObjectStoragePath:
        """Return the prepared-requests file of one chunk."""
        return layout.chunk_path(self.root, round_number, chunk)

    def shared_prompt_path(self, round_number: int, digest: str) -> ObjectStoragePath:
        """Return the file of a long prompt the round's requests share, stored once."""
        return layout.shared_prompt_path(self.chunks_dir(round_number), digest)

    def run_marker_path(self, round_number: int, source: ObjectStoragePath) -> ObjectStoragePath:
        """Return the marker of a landed file's sorted run, written last."""
        return layout.run_marker_path(self.root, round_number, source)

    def run_index_path(self, round_number: int, source: ObjectStoragePath) -> ObjectStoragePath:
        """Return the index of a landed file's sorted run: each line's input row, then its byte offset."""
        return layout.run_index_path(self.root, round_number, source)

    def sorted_run_path(self, round_number: int, source: ObjectStoragePath) -> ObjectStoragePath:
        """Return the copy of a landed file in input-row order, for a file whose rows came out of order."""
        return layout.sorted_run_path(self.root, round_number, source)

    def chunk_inputs_path(self, round_number: int, chunk: int) -> ObjectStoragePath:
        """Return the inputs twin of one chunk (each request's input row and passthrough fields)."""
        return layout.chunk_inputs_path(self.root, round_number, chunk)

    def invalid_input_path(self, round_number: int) -> ObjectStoragePath:
        """Return the failures file of a round's rows skipped as invalid input."""
        return layout.invalid_input_path(self.root, round_number)

    def reused_path(self, round_number: int) -> ObjectStoragePath:
        """Return the result rows of a round's requests answered without a batch."""
        return layout.reused_path(self.root, round_number)

    def results_part(self, round_number: int, batch_id: str) -> ObjectStoragePath:
        """Return the succeeded-rows file of one batch."""
        return layout.results_part(self.root, round_number, batch_id)

    def failures_part(self, round_number: int, batch_id: str) -> ObjectStoragePath:
        """Return the failed-rows file of one batch."""
        return layout.failures_part(self.root, round_number, batch_id)

    def batch_stats_path(self, round_number: int, batch_id: str) -> ObjectStoragePath:
        """Return the stats sidecar whose presence marks a batch as completely gathered."""
        return layout.gather_stats_path(self.root, round_number, batch_id)

    # -- states -----------------------------------------------------------------------------

    def has_chunk(self, round_number: int, chunk: int) -> bool:
        """Return whether a chunk's prepared-requests file is in the round folder."""
        return bool(self.chunk_path(round_number, chunk).exists())

    def is_landed(self, round_number: int, batch_id: str) -> bool:
        """Return whether a batch's rows are landed (its stats sidecar exists)."""
        return bool(self.batch_stats_path(round_number, batch_id).exists())

    # -- a round's prepared chunks ---------------------------------------------------------

    def install_chunks(
        self,
        round_number: int,
        staging: ObjectStoragePath,
        chunks: Mapping[int, Sequence[str]],
        invalid_file: ObjectStoragePath | None,
    ) -> None:
        """Move a submit's staged chunks, their inputs twins, invalid and reused rows into the round.

        ``chunks``: each chunk's index and the digests of the shared prompts it references (moved too).

        What an earlier preparation of the round installed is replaced: old chunk files go, and
        an invalid or reused file the new preparation has none of is deleted.
        """
        for target in (self.chunks_dir(round_number), self.inputs_dir(round_number)):
            remove_tree(target)
            target.mkdir(parents=True, exist_ok=True)
        for chunk, shared in chunks.items():
            self._move_chunk(round_number, staging, chunk, shared)
        invalid_path = self.invalid_input_path(round_number)
        if invalid_file is not None:
            invalid_file.rename(invalid_path)
        elif invalid_path.exists():
            invalid_path.unlink()
        reused_path = self.reused_path(round_number)
        staged_reused = staging / layout.REUSED_FILE
        if staged_reused.exists():
            staged_reused.rename(reused_path)
        elif reused_path.exists():
            reused_path.unlink()

    def restore_chunks(
        self, round_number: int, staging: ObjectStoragePath, chunks: Mapping[int, Sequence[str]]
    ) -> None:
        """Put back staged chunk files missing from the round (e.g. a local job folder on a new worker)."""
        for chunk, shared in chunks.items():
            if not self.has_chunk(round_number, chunk):
                self._move_chunk(round_number, staging, chunk, shared)
            else:
                self._move_shared(round_number, staging, shared)

    def chunk_inputs_lines(self, round_number: int, chunk: int) -> Iterator[bytes] | None:
        """Return the lines of a chunk's inputs twin, streamed; None for a chunk submitted without one."""
        path = self.chunk_inputs_path(round_number, chunk)
        return iter_jsonl_lines(path) if path.exists() else None

    def read_chunk_inputs(self, round_number: int, chunk: int) -> bytes | None:
        """Return a chunk's inputs twin whole (one decode call); None for a chunk submitted without one."""
        path = self.chunk_inputs_path(round_number, chunk)
        return bytes(path.read_bytes()) if path.exists() else None

    def _move_chunk(
        self, round_number: int, staging: ObjectStoragePath, chunk: int, shared: Sequence[str]
    ) -> None:
        """Move one staged chunk file, its inputs twin and the shared prompts it references into the round."""
        from airflow_batch.submit.chunk_files import INPUTS_DIR

        name = layout.chunk_file_name(chunk)
        for staged, target in (
            (staging / name, self.chunk_path(round_number, chunk)),
            (staging / INPUTS_DIR / name, self.chunk_inputs_path(round_number, chunk)),
        ):
            target.parent.mkdir(parents=True, exist_ok=True)
            staged.rename(target)
        self._move_shared(round_number, staging, shared)

    def _move_shared(self, round_number: int, staging: ObjectStoragePath, shared: Sequence[str]) -> None:
        """Move the staged shared prompts a chunk references into the round, where they are missing."""
        for digest in shared:
            staged, target = (
                layout.shared_prompt_path(staging, digest),
                self.shared_prompt_path(round_number, digest),
            )
            if staged.exists() and not target.exists():  # a prompt shared by several chunks moves once
                target.parent.mkdir(parents=True, exist_ok=True)
                staged.rename(target)

    # -- landed batches ---------------------------------------------------------------------

    def read_batch_stats(self, round_number: int, batch_id: str) -> BatchGatherStats | None:
        """Return the stats of a landed batch, or None when it is not landed yet."""

        path = self.batch_stats_path(round_number, batch_id)
        try:
            return self._stats_at(path)
        except JobFileMissingError:
            return None

    def _stats_at(self, path: ObjectStoragePath) -> BatchGatherStats:
        from airflow_batch.gather.stats import BatchGatherStats

        what = f"the stats of landed batch {path.name.removesuffix('.stats.json')} of {self.root}"
        fix = "Delete it (and the batch's parts beside it) and clear the round's gather: it lands them again"
        document = read_object(path, what, fix)
        try:
            return BatchGatherStats.from_json(document)
        except TypeError as error:  # a required field is missing
            raise damaged(path, what, str(error), fix) from error

    def write_batch_stats(self, round_number: int, stats: BatchGatherStats) -> None:
        """Store a landed batch's stats: its presence marks the batch as completely landed."""
        write_json(self.batch_stats_path(round_number, stats.batch_id), stats.to_json())

    def landed_stats(self, round_number: int) -> list[BatchGatherStats]:
        """Return the stats of every batch of a round landed so far, in batch id order."""
        folder = layout.round_dir(self.root, round_number) / "results"
        sidecars = sorted(folder.glob("*.stats.json")) if folder.exists() else []
        return [self._stats_at(sidecar) for sidecar in sidecars]

    def remove_part_leftovers(self, round_number: int, batch_id: str) -> None:
        """Delete the temporary files an interrupted write of a batch's parts left behind."""
        for path in (self.results_part(round_number, batch_id), self.failures_part(round_number, batch_id)):
            if not path.parent.exists():
                continue
            for leftover in path.parent.glob(f".{path.name}.*.tmp"):
                with contextlib.suppress(Exception):
                    leftover.unlink()

    @contextlib.contextmanager
    def part_writers(self, round_number: int, batch_id: str) -> Iterator[tuple[IO[bytes], IO[bytes]]]:
        """Yield (results, failures) part files of a batch that appear only if the block completes."""
        with (
            atomic_writer(self.results_part(round_number, batch_id)) as results,
            atomic_writer(self.failures_part(round_number, batch_id)) as failures,
        ):
            yield results, failures
