"""The training data loader of ViL-Seg: image-caption pairs from the datasets in
``cfg.DATASETS.TRAIN``, mapped to the training views, batched as Detectron2 does."""

from __future__ import annotations

import logging
import os
from typing import Callable

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import build_batch_data_loader
from detectron2.utils import comm

from ..errors import MissingFileError
from .caption_datasets import (
    check_image_files,
    is_local_path,
    read_caption_manifest,
    read_coco_captions,
    resolve_shards,
)
from .caption_mapper import ViLSegCaptionDatasetMapper
from .caption_stream import CaptionTrainStream, MapStyleCaptionSource, ShardCaptionSource
from .collate import caption_batch_collator
from .datasets.register_captions import register_caption_datasets_from_config, require_file
from .datasets.register_sem_seg import DatasetNotRegisteredError
from .skip_tracker import SkippedRecordsError

__all__ = ["build_caption_train_loader", "build_caption_source"]

logger = logging.getLogger(__name__)

# Weight of a shard when several training datasets are mixed and the shard dataset did not say
# how many samples it has (img2dataset writes 10,000 samples per shard by default).
_DEFAULT_SAMPLES_PER_SHARD = 10000


class CaptionDatasetNotRegisteredError(DatasetNotRegisteredError):
    """A name of ``DATASETS.TRAIN`` that is not registered (a KeyError printed as its message)."""


def _manifest_source(name: str, meta, *, seed: int, max_skip_fraction: float, min_records: int):
    require_file(name, meta.manifest, meta.get("missing_hint", "see datasets/README.md"))
    contents = read_caption_manifest(
        meta.manifest,
        meta.get("image_root"),
        image_key=meta.get("image_key", "file_name"),
        caption_key=meta.get("caption_key", "caption"),
    )
    num_bad = len(contents.bad_lines)
    if contents.num_lines >= min_records and num_bad / contents.num_lines > max_skip_fraction:
        lines = ", ".join(f"{n} ({r})" for n, r in contents.bad_lines[:5])
        raise SkippedRecordsError(
            f"Too many bad lines in the manifest of caption dataset '{name}', {meta.manifest}: "
            f"{num_bad} of {contents.num_lines} lines skipped "
            f"({num_bad / contents.num_lines:.1%}) > DATALOADER.MAX_SKIP_FRACTION = "
            f"{max_skip_fraction:g}. First bad lines: {lines}."
        )
    if not contents.records:
        raise ValueError(f"Caption dataset '{name}': no usable line in {meta.manifest}.")
    check_image_files(
        name, contents.records, contents.image_root, meta.manifest, origin=meta.get("origin", "")
    )
    return MapStyleCaptionSource(contents.records, seed=seed, description=meta.manifest)


def _shard_source(name: str, meta, *, seed: int, shuffle_buffer: int, max_skip_fraction: float):
    spec = meta.shards
    description = spec if isinstance(spec, str) else f"{len(spec)} shards ({spec[0]}, ...)"
    shards = resolve_shards(spec)
    if not shards:
        raise MissingFileError(
            f"Caption dataset '{name}': no shard found at {spec}. Download it with img2dataset "
            f"(output_format webdataset) into that folder (see datasets/README.md), or register "
            f"the right location with vilseg_d2.data.register_caption_dataset."
        )
    missing = [s for s in shards if is_local_path(s) and not os.path.isfile(s)]
    if missing:
        msg = (
            f"Caption dataset '{name}': {len(missing)} of {len(shards)} shards are missing: "
            f"{', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}"
        )
        if len(missing) == len(shards) or len(missing) / len(shards) > max_skip_fraction:
            raise MissingFileError(
                msg + f". That is more than DATALOADER.MAX_SKIP_FRACTION = {max_skip_fraction:g}"
                f" of the shards: restore them or change the shard list."
            )
        logger.warning(msg + ". Training on the others (counted as skipped).")
        shards = [s for s in shards if s not in set(missing)]
    world_size = comm.get_world_size()
    if len(shards) < world_size:
        raise ValueError(
            f"Caption dataset '{name}' has {len(shards)} shard(s) for {world_size} processes: each "
            f"process needs at least one. Re-shard the data into more, smaller shards "
            f"(img2dataset --number_sample_per_shard)."
        )
    return ShardCaptionSource(
        shards, seed=seed, shuffle_buffer=shuffle_buffer, description=description
    )


def build_caption_source(
    name: str,
    *,
    seed: int,
    shuffle_buffer: int = 1000,
    max_skip_fraction: float = 0.1,
    min_records: int = 100,
) -> tuple[object, float]:
    """Build the record source of one registered caption dataset.

    Args:
        name: a name registered with :func:`register_caption_dataset` (or any dataset whose
            ``DatasetCatalog`` entry gives ``{"file_name", "caption"}`` records).
        seed: shuffle seed, equal on all ranks.
        shuffle_buffer: in-worker sample shuffle buffer of shard datasets.
        max_skip_fraction, min_records: the bad-record limit (checked here for manifest lines).

    Returns:
        (source, weight): a :class:`MapStyleCaptionSource` or :class:`ShardCaptionSource` and
        its number of samples (for mixing several datasets).
    """
    meta = MetadataCatalog.get(name)
    kind = meta.get("caption_source_type")
    if kind == "manifest":
        source = _manifest_source(
            name, meta, seed=seed, max_skip_fraction=max_skip_fraction, min_records=min_records
        )
        return source, float(source.num_records)
    if kind == "coco":
        require_file(name, meta.coco_json, meta.get("missing_hint", "see datasets/README.md"))
        records = read_coco_captions(meta.coco_json, meta.image_root)
        check_image_files(
            name, records, meta.image_root, meta.coco_json, origin=meta.get("origin", "")
        )
        source = MapStyleCaptionSource(records, seed=seed, description=meta.coco_json)
        return source, float(source.num_records)
    if kind == "shards":
        source = _shard_source(
            name,
            meta,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            max_skip_fraction=max_skip_fraction,
        )
        weight = meta.get("num_samples") or _DEFAULT_SAMPLES_PER_SHARD * len(source.shards)
        return source, float(weight)
    if kind is not None:
        raise ValueError(f"Caption dataset '{name}': unknown caption_source_type {kind!r}.")
    if name not in DatasetCatalog.list():
        captions = [
            n
            for n in sorted(DatasetCatalog.list())
            if MetadataCatalog.get(n).get("caption_source_type")
        ]
        raise CaptionDatasetNotRegisteredError(
            f"Caption dataset '{name}' is not registered in this process. Caption datasets: "
            f"{', '.join(captions)}. Register yours on the command line, e.g. "
            f"DATASETS.CAPTION_DATASETS '(\"name={name},manifest=/data/pairs.jsonl\",)' (or "
            f"shards=/data/shards/{{00000..00099}}.tar); a register_caption_dataset call in "
            f"another script does not reach tools/train_net.py."
        )
    records = DatasetCatalog.get(name)
    if (
        not records
        or not isinstance(records[0], dict)
        or "caption" not in records[0]
        and "captions" not in records[0]
    ):
        raise ValueError(
            f"Dataset '{name}' is not a caption dataset (its records have no 'caption'); "
            f"DATASETS.TRAIN must name caption datasets such as synthetic_captions_train."
        )
    source = MapStyleCaptionSource(records, seed=seed, description=f"DatasetCatalog '{name}'")
    return source, float(source.num_records)


def build_caption_train_loader(
    cfg,
    mapper: Callable[[dict], dict] | None = None,
    collate_fn: Callable[[list], list] = caption_batch_collator,
):
    """Build ViL-Seg's training loader, like Detectron2's ``build_detection_train_loader``.

    Registers ``cfg.DATASETS.CAPTION_DATASETS``, then reads ``cfg.DATASETS.TRAIN`` (caption
    datasets; several are interleaved in proportion to their sizes),
    ``cfg.SOLVER.IMS_PER_BATCH`` (the global batch, divided by the world size),
    ``cfg.DATALOADER.NUM_WORKERS``, ``cfg.DATALOADER.MAX_SKIP_FRACTION``,
    ``cfg.DATALOADER.MIN_RECORDS_FOR_SKIP_CHECK``, ``cfg.DATALOADER.SHUFFLE_BUFFER_SIZE`` and
    ``cfg.SEED`` (< 0: a random seed shared by all ranks). Must be called on every rank.

    Args:
        cfg: a config with :func:`add_vilseg_config` keys.
        mapper: record -> sample; default ``ViLSegCaptionDatasetMapper(cfg, True)``.
        collate_fn: the DataLoader's; the default packs a worker's batch into one tensor per
            key for the trip to the trainer (:mod:`vilseg_d2.data.collate`).

    Returns:
        An infinite iterable of ``list[dict]`` (this rank's batch of mapper outputs); its
        ``dataset`` is the :class:`CaptionTrainStream`, whose ``set_start_iteration`` resumes it.
    """
    register_caption_datasets_from_config(cfg)
    names = cfg.DATASETS.TRAIN
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("cfg.DATASETS.TRAIN is empty: name at least one caption dataset.")
    if mapper is None:
        mapper = ViLSegCaptionDatasetMapper(cfg, True)
    seed = int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())
    max_skip = float(cfg.DATALOADER.MAX_SKIP_FRACTION)
    min_records = int(cfg.DATALOADER.MIN_RECORDS_FOR_SKIP_CHECK)
    shuffle_buffer = int(cfg.DATALOADER.get("SHUFFLE_BUFFER_SIZE", 1000))
    sources = []
    for name in names:
        source, weight = build_caption_source(
            name,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            max_skip_fraction=max_skip,
            min_records=min_records,
        )
        sources.append((name, source, weight))
    if len(sources) > 1:
        total = sum(w for _, _, w in sources)
        logger.info(
            "Mixing caption datasets: " + ", ".join(f"{n} ({w / total:.1%})" for n, _, w in sources)
        )
    batch_size = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    dataset = CaptionTrainStream(
        sources,
        mapper,
        max_skip_fraction=max_skip,
        min_records=min_records,
        seed=seed,
        batch_size=max(batch_size, 1),
    )
    return build_batch_data_loader(
        dataset,
        None,
        cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=collate_fn,
    )
