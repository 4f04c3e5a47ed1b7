"""build_caption_train_loader: batches from cfg, several datasets mixed, DataLoader workers."""

import json

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from vilseg_d2.config import add_vilseg_config
from vilseg_d2.data import SkippedRecordsError, build_caption_train_loader, register_caption_dataset

from data_fixtures import make_shards, write_images


def tiny_cfg(*train, batch=4, workers=0):
    cfg = get_cfg()
    add_vilseg_config(cfg)
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.SHUFFLE_BUFFER_SIZE = 8
    cfg.SEED = 7
    v = cfg.INPUT.VILSEG
    v.GLOBAL_SIZE, v.LOCAL_SIZE, v.NUM_LOCAL_CROPS = 32, 16, 3
    return cfg


@pytest.fixture
def manifest_dataset(tmp_path):
    names = write_images(str(tmp_path / "m"), 6)
    with open(tmp_path / "m" / "pairs.jsonl", "w") as f:
        for i, n in enumerate(names):
            f.write(json.dumps({"file_name": n, "caption": f"manifest {i}"}) + "\n")
        f.write(json.dumps({"file_name": "missing.jpg", "caption": "never seen"}) + "\n")
    register_caption_dataset("test_build_manifest", manifest=str(tmp_path / "m" / "pairs.jsonl"))
    return {f"manifest {i}" for i in range(6)}


@pytest.fixture
def shard_dataset(tmp_path):
    _, good = make_shards(str(tmp_path / "s"), 4, 5, broken={(2, 2): "zero_byte"})
    register_caption_dataset("test_build_shards", shards=str(tmp_path / "s"), num_samples=20)
    return good


def test_batches_of_mapped_samples(manifest_dataset):
    cfg = tiny_cfg("test_build_manifest")
    loader = build_caption_train_loader(cfg)
    it = iter(loader)
    batches = [next(it) for _ in range(6)]
    assert all(isinstance(b, list) and len(b) == 4 for b in batches)
    s = batches[0][0]
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.uint8
    assert len(s["local_crops"]) == 3 and s["local_crops"][0].shape == (3, 16, 16)
    assert s["transformed_image"].shape == (3, 32, 32) and isinstance(s["flip"], bool)
    captions = [x["caption"] for b in batches for x in b]
    assert set(captions) == manifest_dataset  # the missing file never appears; batches stay full
    assert loader.dataset.trackers["test_build_manifest"].num_skipped >= 2  # ~3.5 passes


def test_mixing_and_workers(manifest_dataset, shard_dataset):
    cfg = tiny_cfg("test_build_manifest", "test_build_shards", batch=4, workers=2)
    loader = build_caption_train_loader(cfg)
    captions = []
    for batch in loader:
        assert len(batch) == 4
        captions += [x["caption"] for x in batch]
        if len(captions) >= 120:
            break
    seen = set(captions)
    assert seen & manifest_dataset and seen & shard_dataset
    assert seen <= manifest_dataset | shard_dataset


def test_config_errors(manifest_dataset):
    cfg = tiny_cfg()
    with pytest.raises(ValueError, match="DATASETS.TRAIN is empty"):
        build_caption_train_loader(cfg)
    DatasetCatalog.register(
        "test_not_captions", lambda: [{"file_name": "a.jpg", "sem_seg_file_name": "a.png"}]
    )
    with pytest.raises(ValueError, match="not a caption dataset"):
        build_caption_train_loader(tiny_cfg("test_not_captions"))
    DatasetCatalog.remove("test_not_captions")


def test_custom_mapper(manifest_dataset):
    cfg = tiny_cfg("test_build_manifest", batch=2)
    loader = build_caption_train_loader(cfg, mapper=lambda r: {"caption": str(r["caption"])})
    batch = next(iter(loader))
    assert len(batch) == 2 and set(batch[0]) == {"caption"}


def test_worker_error_reaches_the_trainer(tmp_path):
    broken = {(s, i): "not_image" for s in range(2) for i in range(0, 10, 2)}  # 50% broken
    make_shards(str(tmp_path / "bad"), 2, 10, broken=broken)
    register_caption_dataset("test_build_bad_shards", shards=str(tmp_path / "bad"))
    cfg = tiny_cfg("test_build_bad_shards", batch=2, workers=2)
    cfg.DATALOADER.MIN_RECORDS_FOR_SKIP_CHECK = 4
    with pytest.raises(SkippedRecordsError, match="test_build_bad_shards"):
        for _ in build_caption_train_loader(cfg):
            pass


def test_stream_pickles_for_spawned_workers(manifest_dataset, shard_dataset):
    import pickle

    cfg = tiny_cfg("test_build_manifest", "test_build_shards")
    stream = build_caption_train_loader(cfg).dataset
    clone = pickle.loads(pickle.dumps(stream))
    assert next(iter(clone))["image"].shape == (3, 32, 32)
