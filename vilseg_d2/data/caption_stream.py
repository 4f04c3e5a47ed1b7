"""Infinite training streams of caption records, with bad records skipped and counted.

* :class:`MapStyleCaptionSource`: a list of records (manifest, COCO captions) drawn in the
  order of Detectron2's :class:`TrainingSampler` (reshuffled every pass, split across ranks),
  split across DataLoader workers record by record as Detectron2's :class:`ToIterableDataset`
  does.
* :class:`ShardCaptionSource`: webdataset tar shards streamed with the ``webdataset`` library
  (never loaded whole): every epoch the shard list is reshuffled with a seed shared by all
  ranks, then split by rank (the rank is taken when the loader is built, like Detectron2's
  samplers do, so that it is right in DataLoader workers of any start method) and by DataLoader
  worker (``wds.split_by_worker``), so no sample is read twice in an epoch; samples are shuffled
  in a buffer inside each worker.
* :class:`CaptionTrainStream`: maps records with the mapper, skips and counts the bad ones
  (:class:`SkipTracker`) and, for several datasets, interleaves them by weight.

A skipped record is replaced by the next one of the same stream, so batches stay full and the
sampling order of the good records is unchanged.

Determinism and resuming: the stream is a function of the seed, the rank and the record
positions only. The mapper's random augmentations are drawn from ``np.random`` seeded per record
from (seed, dataset, rank, position of the record in the rank's stream), and the dataset mixing
has its own generator per reader, so neither the DataLoader workers' seeds nor the process's
global RNG state matter. :meth:`CaptionTrainStream.set_start_iteration` (called by the trainer
on ``--resume``) makes every reader skip what it had delivered before the checkpoint, so a
resumed run sees the batches an uninterrupted run would have seen (see there for the limits).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch.utils.data as torchdata
from detectron2.data.common import DatasetFromList
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm

from .caption_datasets import is_local_path, shard_sample_to_record
from .skip_tracker import BadRecordError, SkippedRecordsError, SkipTracker

__all__ = [
    "MapStyleCaptionSource",
    "ShardCaptionSource",
    "CaptionTrainStream",
    "worker_info",
    "tar_looks_complete",
]

logger = logging.getLogger(__name__)


def worker_info() -> tuple[int, int]:
    """(worker id, number of workers) of the calling DataLoader worker, (0, 1) outside one, as
    ``wds.split_by_worker`` sees them."""
    from webdataset.utils import pytorch_worker_info

    _, _, worker, num_workers = pytorch_worker_info()
    return worker, num_workers


class MapStyleCaptionSource:
    """Records held in memory (serialised, as Detectron2's DatasetFromList does).

    Args:
        records: caption records.
        seed: seed of the :class:`TrainingSampler` shuffle (must be equal on all ranks).
        description: what the records were read from (manifest path), used in messages.
    """

    def __init__(self, records: list[dict], *, seed: int, description: str):
        if len(records) == 0:
            raise ValueError(f"No caption records in {description}.")
        self.description = description
        self.num_records = len(records)
        self._dataset = DatasetFromList(records, copy=False)
        self._sampler = TrainingSampler(len(records), shuffle=True, seed=seed)

    def iter_records(
        self,
        tracker: SkipTracker,
        *,
        reader: int | None = None,
        num_readers: int | None = None,
        start: int = 0,
    ) -> Iterator[dict]:
        """Infinite stream of this rank's records read by one DataLoader worker.

        The rank's stream (the sampler's indices) is dealt out record by record: reader ``r``
        of ``n`` gets positions ``r, r + n, r + 2n, ...``.

        Args:
            tracker: unused (map-style records are all in memory).
            reader, num_readers: the reader's place; default: the calling DataLoader worker.
            start: skip the reader's first ``start`` records (resuming; only indices are
                drawn, nothing is read or decoded).
        """
        if reader is None or num_readers is None:
            reader, num_readers = worker_info()
        indices = itertools.islice(
            iter(self._sampler), reader + num_readers * start, None, num_readers
        )
        for index in indices:
            yield self._dataset[index]

    def locate(self, record: dict) -> tuple[str, str]:
        """(record, file it came from) for messages."""
        return str(record.get("file_name", "?")), self.description


def tar_looks_complete(path: str) -> bool:
    """Whether a local tar file ends with the end-of-archive marker (two zero 512-byte blocks).

    Python's tarfile reads a tar cut short (an interrupted copy) without an error, silently
    dropping the rest; this check catches that case.
    """
    size = os.path.getsize(path)
    if size < 1024 or size % 512:
        return False
    with open(path, "rb") as f:
        f.seek(size - 1024)
        return not any(f.read(1024))


class ShardCaptionSource:
    """Webdataset tar shards, streamed.

    Args:
        shards: shard paths or URLs (see :func:`resolve_shards`).
        seed: seed of the per-epoch shard shuffle; must be equal on all ranks.
        shuffle_buffer: size of the in-worker sample shuffle buffer (<= 1 disables it).
        description: the shard specification, used in messages.
        rank, world_size: this process's place in the distributed job (default: Detectron2's
            ``comm`` when the source is built).
    """

    def __init__(
        self,
        shards: Sequence[str],
        *,
        seed: int,
        shuffle_buffer: int = 1000,
        description: str = "",
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if len(shards) == 0:
            raise ValueError(f"No shards in {description}.")
        self.rank = comm.get_rank() if rank is None else int(rank)
        self.world_size = comm.get_world_size() if world_size is None else int(world_size)
        self.shards = list(shards)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.description = description or f"{len(self.shards)} shards"

    def num_shards_for_reader(self) -> int:
        """How many shards this rank's DataLoader worker reads per epoch (same every epoch)."""
        worker, num_workers = worker_info()
        per_rank = len(range(self.rank, len(self.shards), self.world_size))
        return len(range(worker, per_rank, num_workers))

    def _handler(self, tracker: SkipTracker) -> Callable[[Exception], bool]:
        known = set(self.shards)

        def handler(exn: Exception) -> bool:
            shard = next((a for a in exn.args if isinstance(a, str) and a in known), None)
            first = str(exn.args[0]) if exn.args else ""
            if shard is None:  # webdataset appends " @ <stream>" to member errors
                shard = next((s for s in self.shards if s in first), "unknown shard")
            tracker.shard_failed(shard, f"{type(exn).__name__}: {first.split(' @ ')[0]}")
            return True  # continue with the next shard

        return handler

    def _split_by_rank(self, src: Iterator[dict]) -> Iterator[dict]:
        """``wds.split_by_node`` with the rank fixed at construction."""
        return itertools.islice(src, self.rank, None, self.world_size)

    @staticmethod
    def _check_truncation(tracker: SkipTracker) -> Callable[[Iterator[dict]], Iterator[dict]]:
        def stage(src: Iterator[dict]) -> Iterator[dict]:
            for shard in src:
                url = shard["url"]
                if is_local_path(url) and os.path.isfile(url) and not tar_looks_complete(url):
                    tracker.shard_failed(
                        url, "truncated tar file: the samples after the cut are lost"
                    )
                yield shard

        return stage

    def iter_epoch(self, epoch: int, tracker: SkipTracker, *, resume: int = 0) -> Iterator[dict]:
        """The records this reader gets in ``epoch``: a disjoint part of all shards' samples.

        ``resume`` > 0 (a resumed run's skip count) gives each epoch another shard order and
        sample shuffle, deterministic for (seed, epoch, resume).
        """
        import webdataset as wds

        worker, _ = worker_info()
        shard_seed = self.seed + epoch if resume == 0 else f"{self.seed}-{epoch}-resume-{resume}"
        stages = [
            wds.SimpleShardList(self.shards, seed=shard_seed),  # same order on all ranks
            self._split_by_rank,
            wds.split_by_worker,
            self._check_truncation(tracker),
            wds.tarfile_to_samples(handler=self._handler(tracker)),
        ]
        if self.shuffle_buffer > 1:
            rng = random.Random(f"{shard_seed}-{self.rank}-{worker}")
            stages.append(
                wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)
            )
        for sample in wds.DataPipeline(*stages):
            yield shard_sample_to_record(sample)

    def iter_records(
        self,
        tracker: SkipTracker,
        *,
        reader: int | None = None,
        num_readers: int | None = None,
        start: int = 0,
    ) -> Iterator[dict]:
        """Infinite stream: epoch after epoch, each with a new shard order.

        Args:
            tracker: counts unreadable shards.
            reader, num_readers: ignored: shards are split by the calling DataLoader worker
                (``wds.split_by_worker``).
            start: > 0 when resuming: skipping that many samples would mean reading them all
                again, so the stream instead starts new epochs with a shard order and shuffle
                seeded by ``start`` (deterministic, but not a replay of the interrupted run).
        """
        worker, num_workers = worker_info()
        if start > 0:
            logger.info(
                f"{self.description}: resuming after {start} samples of worker {worker} of rank "
                f"{self.rank}: new shard order and shuffle seeded by that count."
            )
        num_mine = self.num_shards_for_reader()
        if num_mine == 0:
            logger.warning(
                f"{self.description}: {len(self.shards)} shards for {self.world_size} rank(s) x "
                f"{num_workers} DataLoader worker(s): worker {worker} of rank {self.rank} has no "
                f"shard and stays idle. Use at most {len(self.shards) // self.world_size} workers, "
                f"or more shards."
            )
            return
        for epoch in itertools.count():
            num_records, bad_before = 0, tracker.num_bad_shards
            for rec in self.iter_epoch(epoch, tracker, resume=start):
                num_records += 1
                yield rec
            if num_records == 0:  # all unreadable or empty: never spin on nothing
                unreadable = tracker.num_bad_shards > bad_before
                raise SkippedRecordsError(
                    f"None of the {num_mine} shard(s) read by {tracker.describe()} "
                    f"{'could be read' if unreadable else 'holds a sample'} in epoch {epoch} "
                    f"({self.description})."
                    + (f" Last error: {tracker.last_error}" if unreadable else "")
                )
            logger.info(f"Epoch {epoch} of shards done: {tracker.summary()}")

    @staticmethod
    def locate(record: dict) -> tuple[str, str]:
        """(record, shard it came from) for messages."""
        url = str(record.get("__url__", "?"))
        return f"{url}#{record.get('__key__', '?')}", url


@contextlib.contextmanager
def _np_random_seeded(*key: int) -> Iterator[None]:
    """Run the block with ``np.random`` seeded from ``key``. In the main process (no DataLoader
    workers) its previous state is restored afterwards; a worker's state belongs to the stream
    (saving and restoring it costs more than seeding)."""
    state = np.random.get_state() if torchdata.get_worker_info() is None else None
    np.random.seed(np.random.SeedSequence(list(key)).generate_state(4))
    try:
        yield
    finally:
        if state is not None:
            np.random.set_state(state)


def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int | None = None):
    """Indices drawn with the probabilities whose cumulative sums are ``cdf`` (one uniform each,
    so drawing ``size`` at once equals ``size`` single draws)."""
    u = rng.random() if size is None else rng.random(size)
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


class CaptionTrainStream(torchdata.IterableDataset):
    """Infinite stream of mapped training samples from one or more caption datasets.

    Every sample is a function of (seed, dataset, rank, position of its record in the rank's
    stream): the mapper's ``np.random`` is seeded per record, and several datasets are mixed by
    a generator seeded per (seed, rank, reader). Without DataLoader workers, the process's own
    ``np.random`` state is restored after each record.

    Args:
        sources: ``(dataset_name, source, weight)``; several are interleaved at random in
            proportion to ``weight`` (e.g. their numbers of records).
        mapper: record -> sample; raises :class:`BadRecordError` for bad records.
        max_skip_fraction: see :class:`SkipTracker`.
        min_records: see :class:`SkipTracker`.
        seed: seed of the augmentations and of the mixing, equal on all ranks.
        batch_size: samples per batch of this rank (the DataLoader's ``batch_size``), used to
            find where to resume (:meth:`set_start_iteration`).
    """

    def __init__(
        self,
        sources: Sequence[tuple[str, object, float]],
        mapper: Callable[[dict], dict],
        *,
        max_skip_fraction: float,
        min_records: int,
        seed: int = 0,
        batch_size: int = 1,
    ):
        if not sources:
            raise ValueError("CaptionTrainStream needs at least one caption dataset.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.sources = list(sources)
        self.mapper = mapper
        self.max_skip_fraction = max_skip_fraction
        self.min_records = min_records
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.start_iter = 0
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        # The trackers of the last iteration in this process (one per dataset).
        self.trackers: dict[str, SkipTracker] = {}

    def set_start_iteration(self, iteration: int) -> None:
        """Continue the stream after ``iteration`` batches (a resumed run's first iteration).

        How the position is restored: the DataLoader takes batch ``b`` from worker
        ``b % num_workers``, each worker's batches being consecutive ``batch_size`` samples of
        its reader's part of the rank's stream. A new iterator starts again at worker 0, so
        worker ``w`` takes over the part of reader ``(w + iteration) % num_workers`` and skips
        the ``batch_size`` samples of each batch that reader had delivered. Map-style sources
        skip by drawing sampler indices only (no image is read), and the per-record seeds make
        the skipped-to samples identical to the uninterrupted run's: resuming is exact with the
        same SEED (>= 0), world size, ``SOLVER.IMS_PER_BATCH`` and ``DATALOADER.NUM_WORKERS``.
        Limits: bad records skipped before the checkpoint are not known after it, so the
        stream resumes that many records early (a few samples repeat); shard sources are not
        replayed but restart with a shuffle seeded by the skip count
        (:meth:`ShardCaptionSource.iter_records`).

        Must be called before the DataLoader's iterator is created.
        """
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}.")
        self.start_iter = int(iteration)

    def _reader(self) -> tuple[int, int, int]:
        """(reader, number of readers, samples the reader delivered before ``start_iter``)."""
        worker, num_workers = worker_info()
        reader = (worker + self.start_iter) % num_workers
        return (
            reader,
            num_workers,
            len(range(reader, self.start_iter, num_workers)) * self.batch_size,
        )

    def _mapped(
        self, index: int, source, tracker: SkipTracker, reader: int, num_readers: int, start: int
    ) -> Iterator[dict]:
        records = source.iter_records(tracker, reader=reader, num_readers=num_readers, start=start)
        for k, record in enumerate(records, start):
            # the record's position in the rank's stream: its augmentations' seed
            with _np_random_seeded(self.seed, index, self.rank, reader + num_readers * k):
                try:
                    out = self.mapper(record)
                except BadRecordError as e:
                    where, group = source.locate(record)
                    tracker.record_skipped(str(e), where, group)
                    continue
            tracker.record_ok()
            yield out

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_info()
        reader, num_readers, skip = self._reader()
        context = f"rank {self.rank}/{self.world_size}, worker {worker}/{num_workers}"
        if skip:
            logger.info(
                f"Caption stream ({context}) resumes at iteration {self.start_iter}: "
                f"skipping {skip} samples."
            )
        weights = np.asarray([float(w) for _, _, w in self.sources])
        cdf = np.cumsum(weights / weights.sum())
        rng = np.random.default_rng([self.seed, self.rank, reader])  # mixing of several datasets
        if len(self.sources) == 1:
            starts = [skip]
        else:  # replay the mixing draws of the skipped samples: how many came from each dataset
            starts = np.bincount(_draw(rng, cdf, skip), minlength=len(self.sources)).tolist()
        streams = []
        for index, (name, source, _) in enumerate(self.sources):
            tracker = SkipTracker(
                dataset_name=name,
                source=source.description,
                max_skip_fraction=self.max_skip_fraction,
                min_records=self.min_records,
                context=context,
            )
            self.trackers[name] = tracker
            streams.append(self._mapped(index, source, tracker, reader, num_readers, starts[index]))
        if len(streams) == 1:
            yield from streams[0]
            return
        p = weights / weights.sum()
        while streams:
            i = int(_draw(rng, cdf))
            try:
                yield next(streams[i])
            except StopIteration:  # a worker without shards of this dataset
                del streams[i]
                p = np.delete(p, i)
                if len(p):
                    p = p / p.sum()
                    cdf = np.cumsum(p)
