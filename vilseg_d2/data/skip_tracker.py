"""Counting the caption records that cannot be used, and stopping a run that has too many.

A web-scale caption dataset always has some broken records (a truncated download, an empty
caption, a missing file). They are skipped and counted here; when the skipped fraction passes
``DATALOADER.MAX_SKIP_FRACTION`` the run stops with :class:`SkippedRecordsError`, which names the
dataset and the files the skips came from.
"""

from __future__ import annotations

import collections
import logging

from detectron2.utils.logger import log_every_n_seconds

__all__ = ["BadRecordError", "SkippedRecordsError", "SkipTracker"]

logger = logging.getLogger(__name__)

# Skips logged one by one before only the running count is logged (at most every 30 s).
_NUM_SKIPS_LOGGED_INDIVIDUALLY = 10


class BadRecordError(ValueError):
    """A training record that cannot be used: unreadable image, missing file, bad caption."""


class SkippedRecordsError(RuntimeError):
    """Too large a fraction of a caption dataset's records had to be skipped.

    Takes a single message so that a PyTorch DataLoader worker can re-raise it in the main
    process.
    """


class SkipTracker:
    """Counts used and skipped records of one caption dataset in one process.

    Each DataLoader worker (and each rank) has its own tracker; the fraction is checked per
    tracker, so a worker that sees a representative part of the data stops the run.

    Args:
        dataset_name: the registered name, used in messages.
        source: what the records are read from (manifest path, shard pattern), used in messages.
        max_skip_fraction: the run stops when ``skipped / seen`` exceeds it ...
        min_records: ... and at least this many records were seen (so that the first few
            records cannot stop a run by chance).
        context: where this tracker runs (e.g. ``"rank 0, worker 1"``), used in messages.
    """

    def __init__(
        self,
        *,
        dataset_name: str,
        source: str,
        max_skip_fraction: float,
        min_records: int,
        context: str = "",
    ):
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(
                f"DATALOADER.MAX_SKIP_FRACTION must be in [0, 1], got {max_skip_fraction}."
            )
        self.dataset_name = dataset_name
        self.source = source
        self.max_skip_fraction = float(max_skip_fraction)
        self.min_records = max(int(min_records), 1)
        self.context = context
        self.num_seen = 0
        self.num_skipped = 0
        self.num_bad_shards = 0
        self.skips_by_group: collections.Counter = collections.Counter()
        self.last_error = ""

    @property
    def num_used(self) -> int:
        return self.num_seen - self.num_skipped

    @property
    def skipped_fraction(self) -> float:
        return self.num_skipped / max(self.num_seen, 1)

    def describe(self) -> str:
        """The dataset name and where this tracker runs, for messages."""
        return f"'{self.dataset_name}'" + (f" ({self.context})" if self.context else "")

    def record_ok(self) -> None:
        """Count a record that was used."""
        self.num_seen += 1

    def record_skipped(self, reason: str, where: str, group: str | None = None) -> None:
        """Count a skipped record, log it, and raise when the limit is passed.

        Args:
            reason: why it was skipped.
            where: which record (file name, ``shard#key``, manifest line).
            group: the file the record belongs to (shard, manifest), summarised in the error.

        Raises:
            SkippedRecordsError: the skipped fraction passed ``max_skip_fraction``.
        """
        self.num_seen += 1
        self.num_skipped += 1
        self.skips_by_group[group or self.source] += 1
        self.last_error = f"{where}: {reason}"
        msg = (
            f"Skipped a bad record of {self.describe()}: {where}: {reason} "
            f"[{self.num_skipped} skipped of {self.num_seen} records so far]"
        )
        if self.num_skipped == 1:  # the first: say what happens to the others
            msg += (
                f". Unreadable records are skipped (the first {_NUM_SKIPS_LOGGED_INDIVIDUALLY} "
                f"logged one by one); the run stops when more than "
                f"{self.max_skip_fraction * 100:g}% of {self.min_records} or more records are "
                f"skipped (DATALOADER.MAX_SKIP_FRACTION, "
                f"DATALOADER.MIN_RECORDS_FOR_SKIP_CHECK)."
            )
        if self.num_skipped <= _NUM_SKIPS_LOGGED_INDIVIDUALLY:
            logger.warning(msg)
        else:
            log_every_n_seconds(logging.WARNING, msg, n=30, name=__name__)
        self.check()

    def shard_failed(self, shard: str, reason: str) -> None:
        """Count a shard that could not be opened or was cut short, and log it."""
        self.num_bad_shards += 1
        self.last_error = f"{shard}: {reason}"
        logger.warning(
            f"Unreadable shard of {self.describe()}: {shard}: {reason} "
            f"[{self.num_bad_shards} unreadable shard(s) so far; records read before the "
            f"failure are kept]"
        )

    def check(self) -> None:
        """Raise :class:`SkippedRecordsError` if the skipped fraction passed the limit."""
        if self.num_seen < self.min_records or self.skipped_fraction <= self.max_skip_fraction:
            return
        worst = ", ".join(f"{g} ({n})" for g, n in self.skips_by_group.most_common(5))
        raise SkippedRecordsError(
            f"Too many bad records in caption dataset {self.describe()}, read from {self.source}: "
            f"{self.num_skipped} of {self.num_seen} records skipped "
            f"({self.skipped_fraction:.1%}) > DATALOADER.MAX_SKIP_FRACTION = "
            f"{self.max_skip_fraction:g}. Skips by source: {worst}. Last error: "
            f"{self.last_error}. Repair or remove the broken files, or raise "
            f"DATALOADER.MAX_SKIP_FRACTION."
        )

    def summary(self) -> str:
        """One line with the counts, for the log."""
        return (
            f"{self.describe()}: {self.num_seen} records, {self.num_skipped} skipped "
            f"({self.skipped_fraction:.1%}), {self.num_bad_shards} unreadable shard(s)"
        )
