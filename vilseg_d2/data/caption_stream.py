"""Infinite training streams of caption records, with bad records skipped and counted.

* :class:`MapStyleCaptionSource`: a list of records (manifest, COCO captions) drawn in the
  order of Detectron2's :class:`TrainingSampler` (reshuffled every pass, split across ranks),
  split across DataLoader workers by Detectron2's :class:`ToIterableDataset`.
* :class:`ShardCaptionSource`: webdataset tar shards streamed with the ``webdataset`` library
  (never loaded whole): every epoch the shard list is reshuffled with a seed shared by all
  ranks, then split by rank (``wds.split_by_node``) and by DataLoader worker
  (``wds.split_by_worker``), so no sample is read twice in an epoch; samples are shuffled in a
  buffer inside each worker.
* :class:`CaptionTrainStream`: maps records with the mapper, skips and counts the bad ones
  (:class:`SkipTracker`) and, for several datasets, interleaves them by weight.

A skipped record is replaced by the next one of the same stream, so batches stay full and the
sampling order of the good records is unchanged.
"""

from __future__ import annotations

import itertools
import logging
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch.utils.data as torchdata
from detectron2.data.common import DatasetFromList, ToIterableDataset
from detectron2.data.samplers import TrainingSampler

from .caption_datasets import shard_sample_to_record
from .skip_tracker import BadRecordError, SkippedRecordsError, SkipTracker

__all__ = ["MapStyleCaptionSource", "ShardCaptionSource", "CaptionTrainStream", "reader_info"]

logger = logging.getLogger(__name__)


def reader_info() -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers) of the calling reader, as webdataset sees them."""
    from webdataset.utils import pytorch_worker_info

    return pytorch_worker_info()


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


class ShardCaptionSource:
    """Webdataset tar shards, streamed.

    Args:
        shards: shard paths or URLs (see :func:`resolve_shards`).
        seed: seed of the per-epoch shard shuffle; must be equal on all ranks.
        shuffle_buffer: size of the in-worker sample shuffle buffer (<= 1 disables it).
        description: the shard specification, used in messages.
    """

    def __init__(
        self, shards: Sequence[str], *, seed: int, shuffle_buffer: int = 1000, description: str = ""
    ):
        if len(shards) == 0:
            raise ValueError(f"No shards in {description}.")
        self.shards = list(shards)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.description = description or f"{len(self.shards)} shards"

    def num_shards_for_reader(self) -> int:
        """How many shards this rank's DataLoader worker reads per epoch (same every epoch)."""
        rank, world_size, worker, num_workers = reader_info()
        per_rank = len(range(rank, len(self.shards), world_size))
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

    def iter_epoch(self, epoch: int, tracker: SkipTracker) -> Iterator[dict]:
        """The records this reader gets in ``epoch``: a disjoint part of all shards' samples."""
        import webdataset as wds

        rank, _, worker, _ = reader_info()
        stages = [
            wds.SimpleShardList(self.shards, seed=self.seed + epoch),  # same order on all ranks
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=self._handler(tracker)),
        ]
        if self.shuffle_buffer > 1:
            rng = random.Random(f"{self.seed}-{epoch}-{rank}-{worker}")
            stages.append(
                wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)
            )
        for sample in wds.DataPipeline(*stages):
            yield shard_sample_to_record(sample)

    def iter_records(self, tracker: SkipTracker) -> Iterator[dict]:
        """Infinite stream: epoch after epoch, each with a new shard order."""
        rank, world_size, worker, num_workers = reader_info()
        num_mine = self.num_shards_for_reader()
        if num_mine == 0:
            logger.warning(
                f"{self.description}: {len(self.shards)} shards for {world_size} rank(s) x "
                f"{num_workers} DataLoader worker(s): worker {worker} of rank {rank} has no shard "
                f"and stays idle. Use at most {len(self.shards) // world_size} workers, or more shards."
            )
            return
        for epoch in itertools.count():
            num_records, bad_before = 0, tracker.num_bad_shards
            for rec in self.iter_epoch(epoch, tracker):
                num_records += 1
                yield rec
            if num_records == 0 and tracker.num_bad_shards > bad_before:
                raise SkippedRecordsError(
                    f"None of the {num_mine} shard(s) read by {tracker._where()} could be read "
                    f"in epoch {epoch} ({self.description}). Last error: {tracker.last_error}"
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
        rank, world_size, worker, num_workers = reader_info()
        context = f"rank {rank}/{world_size}, worker {worker}/{num_workers}"
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
