"""Infinite training streams of caption records, with bad records skipped and counted.

* :class:`MapStyleCaptionSource`: a list of records (manifest, COCO captions) drawn in the
  order of Detectron2's :class:`TrainingSampler` (reshuffled every pass, split across ranks),
  split across DataLoader workers by Detectron2's :class:`ToIterableDataset`.
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
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch.utils.data as torchdata
from detectron2.data.common import DatasetFromList, ToIterableDataset
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

    def iter_records(self, tracker: SkipTracker) -> Iterator[dict]:
        """Infinite stream of this rank's and this DataLoader worker's records."""
        yield from ToIterableDataset(self._dataset, self._sampler, shard_chunk_size=1)

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
                    tracker.shard_failed(url, "truncated tar file: the samples after the cut are lost")
                yield shard

        return stage

    def iter_epoch(self, epoch: int, tracker: SkipTracker) -> Iterator[dict]:
        """The records this reader gets in ``epoch``: a disjoint part of all shards' samples."""
        import webdataset as wds

        worker, _ = worker_info()
        stages = [
            wds.SimpleShardList(self.shards, seed=self.seed + epoch),  # same order on all ranks
            self._split_by_rank,
            wds.split_by_worker,
            self._check_truncation(tracker),
            wds.tarfile_to_samples(handler=self._handler(tracker)),
        ]
        if self.shuffle_buffer > 1:
            rng = random.Random(f"{self.seed}-{epoch}-{self.rank}-{worker}")
            stages.append(
                wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)
            )
        for sample in wds.DataPipeline(*stages):
            yield shard_sample_to_record(sample)

    def iter_records(self, tracker: SkipTracker) -> Iterator[dict]:
        """Infinite stream: epoch after epoch, each with a new shard order."""
        worker, num_workers = worker_info()
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
            for rec in self.iter_epoch(epoch, tracker):
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


class CaptionTrainStream(torchdata.IterableDataset):
    """Infinite stream of mapped training samples from one or more caption datasets.

    Args:
        sources: ``(dataset_name, source, weight)``; several are interleaved at random in
            proportion to ``weight`` (e.g. their numbers of records).
        mapper: record -> sample; raises :class:`BadRecordError` for bad records.
        max_skip_fraction: see :class:`SkipTracker`.
        min_records: see :class:`SkipTracker`.
    """

    def __init__(
        self,
        sources: Sequence[tuple[str, object, float]],
        mapper: Callable[[dict], dict],
        *,
        max_skip_fraction: float,
        min_records: int,
    ):
        if not sources:
            raise ValueError("CaptionTrainStream needs at least one caption dataset.")
        self.sources = list(sources)
        self.mapper = mapper
        self.max_skip_fraction = max_skip_fraction
        self.min_records = min_records
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        # The trackers of the last iteration in this process (one per dataset).
        self.trackers: dict[str, SkipTracker] = {}

    def _mapped(self, name: str, source, tracker: SkipTracker) -> Iterator[dict]:
        for record in source.iter_records(tracker):
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
        context = f"rank {self.rank}/{self.world_size}, worker {worker}/{num_workers}"
        streams, weights = [], []
        for name, source, weight in self.sources:
            tracker = SkipTracker(
                dataset_name=name,
                source=source.description,
                max_skip_fraction=self.max_skip_fraction,
                min_records=self.min_records,
                context=context,
            )
            self.trackers[name] = tracker
            streams.append(self._mapped(name, source, tracker))
            weights.append(float(weight))
        if len(streams) == 1:
            yield from streams[0]
            return
        p = np.asarray(weights) / np.sum(weights)
        while streams:
            i = int(np.random.choice(len(streams), p=p))
            try:
                yield next(streams[i])
            except StopIteration:  # a worker without shards of this dataset
                del streams[i]
                p = np.delete(p, i)
                if len(p):
                    p = p / p.sum()
