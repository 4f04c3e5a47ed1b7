"""Webdataset shard streaming: broken members skipped and counted, the skip limit, unreadable
and missing shards, per-epoch reshuffling, and the split across DataLoader workers."""

import os

import numpy as np
import pytest
import torch

from vilseg_d2.data import SkippedRecordsError, ViLSegCaptionDatasetMapper, register_caption_dataset
from vilseg_d2.data.build import build_caption_source
from vilseg_d2.data.caption_stream import CaptionTrainStream, ShardCaptionSource
from vilseg_d2.data.skip_tracker import SkipTracker

from data_fixtures import BROKEN_KINDS, make_shards, write_tar


def small_mapper():
    return ViLSegCaptionDatasetMapper(
        global_size=32, global_scale=(0.4, 1.0), num_local_crops=2, local_size=16,
        local_scale=(0.05, 0.4), color_mul=0.2, color_add=0.1, flip_prob=0.5, image_format="BGR",
    )  # fmt: skip


def key_of(record):
    """A picklable 'mapper' for split tests: the sample key, validated like a caption."""
    from vilseg_d2.data.image_io import validate_caption

    return validate_caption(record.get("caption"))


def stream(shards, mapper, *, name="test_shards", max_skip=0.1, min_records=10, buffer=0, seed=0):
    source = ShardCaptionSource(
        shards, seed=seed, shuffle_buffer=buffer, description=f"{len(shards)} test shards"
    )
    return CaptionTrainStream(
        [(name, source, 1.0)], mapper, max_skip_fraction=max_skip, min_records=min_records
    )


def take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_every_broken_member_kind_is_skipped_and_counted(tmp_path, vlog):
    broken = {(0, i + 1): kind for i, kind in enumerate(BROKEN_KINDS)}  # sample 0 stays good
    stray = [("README.md", b"# not a sample")]  # a non-image member with no partner
    shards, good = make_shards(str(tmp_path), 1, 20, broken=broken, extra_members={0: stray})
    ds = stream(shards, small_mapper(), max_skip=0.9)
    out = take(ds, len(good) + 1)  # one epoch, then the first (good) sample of the next
    assert {o["caption"] for o in out[: len(good)]} == good
    assert out[-1]["caption"] == out[0]["caption"]
    tracker = ds.trackers["test_shards"]
    assert tracker.num_skipped == len(BROKEN_KINDS) + 1
    assert tracker.num_used == len(good) + 1
    text = vlog.text
    for reason in ["truncated", "zero bytes", "not an image", "no image", "empty caption",
                   "not UTF-8", "no caption"]:  # fmt: skip
        assert reason in text, reason
    assert "[9 skipped of" in text and "00000.tar#" in text


def test_five_percent_broken_run_completes_and_reports(tmp_path, vlog):
    kinds = ["truncated_jpeg", "zero_byte", "binary_caption", "empty_caption", "not_image"]
    broken = {(s, 7 + s): kinds[s] for s in range(4)} | {(3, 20): kinds[4]}
    shards, good = make_shards(str(tmp_path), 4, 25, broken=broken)  # 5 of 100 broken
    ds = stream(shards, small_mapper(), max_skip=0.1, min_records=20, buffer=16)
    out = take(ds, 3 * len(good))
    assert len(out) == 285 and {o["caption"] for o in out} == good
    tracker = ds.trackers["test_shards"]
    assert 0.04 <= tracker.skipped_fraction <= 0.06
    assert tracker.num_skipped >= 10 and tracker.num_bad_shards == 0
    assert "Epoch 1 of shards done" in vlog.text and "skipped (5.0%)" in vlog.text


def test_too_many_broken_records_stop_with_the_source_named(tmp_path):
    broken = {(1, i): "truncated_jpeg" for i in range(0, 20, 2)}  # 10 of 40 = 25%
    shards, _ = make_shards(str(tmp_path), 2, 20, broken=broken)
    ds = stream(shards, small_mapper(), name="my_cc3m", max_skip=0.1, min_records=10, buffer=8)
    with pytest.raises(SkippedRecordsError) as e:
        take(ds, 200)
    msg = str(e.value)
    assert "'my_cc3m'" in msg and "00001.tar" in msg and "MAX_SKIP_FRACTION" in msg


def test_truncated_tar_keeps_earlier_records_and_names_the_shard(tmp_path, vlog):
    shards, good = make_shards(str(tmp_path), 2, 10)
    data = open(shards[1], "rb").read()
    with open(shards[1], "wb") as f:
        f.write(data[: len(data) // 2 + 100])  # cut inside a member
    ds = stream(shards, key_of, max_skip=0.5)
    out = take(ds, 14)
    assert set(out) < good and {k for k in out if k.startswith("00000")} == {
        k for k in good if k.startswith("00000")
    }
    assert ds.trackers["test_shards"].num_bad_shards >= 1
    assert "Unreadable shard" in vlog.text and "00001.tar" in vlog.text


def test_all_shards_unreadable_is_an_error(tmp_path):
    shards, _ = make_shards(str(tmp_path), 2, 5)
    ds = stream(shards, key_of)
    for s in shards:
        os.remove(s)  # deleted after the loader was built
    with pytest.raises(SkippedRecordsError, match="None of the 2 shard"):
        take(ds, 1)


def test_missing_shards_at_build_time(tmp_path, vlog):
    shards, _ = make_shards(str(tmp_path), 4, 5)
    missing = str(tmp_path / "00099.tar")
    register_caption_dataset("test_missing_shards", shards=shards + [missing])
    # 1 of 5 missing: within a 0.3 limit -> warned and left out.
    source, weight = build_caption_source("test_missing_shards", seed=0, max_skip_fraction=0.3)
    assert source.shards == shards and weight == 4 * 10000
    assert "00099.tar" in vlog.text
    # Above the limit -> an error naming the shard.
    with pytest.raises(FileNotFoundError, match="00099.tar"):
        build_caption_source("test_missing_shards", seed=0, max_skip_fraction=0.1)
    register_caption_dataset("test_no_shards", shards=str(tmp_path / "nothing" / "*.tar"))
    with pytest.raises(FileNotFoundError, match="no shard found"):
        build_caption_source("test_no_shards", seed=0)


def test_shard_specs_and_catalog(tmp_path):
    shards, _ = make_shards(str(tmp_path / "s"), 3, 2)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from vilseg_d2.data.caption_datasets import resolve_shards

    assert resolve_shards(str(tmp_path / "s")) == shards
    assert resolve_shards(str(tmp_path / "s" / "*.tar")) == shards
    assert resolve_shards(str(tmp_path / "s" / "{00000..00002}.tar")) == shards
    register_caption_dataset(
        "test_spec", shards=str(tmp_path / "s" / "{00000..00002}.tar"), num_samples=6
    )
    assert DatasetCatalog.get("test_spec") == [{"shard": s} for s in shards]
    assert MetadataCatalog.get("test_spec").caption_source_type == "shards"
    assert build_caption_source("test_spec", seed=0)[1] == 6


def test_epochs_reshuffle_the_shards(tmp_path):
    shards, good = make_shards(str(tmp_path), 8, 3)
    source = ShardCaptionSource(shards, seed=5, shuffle_buffer=0)
    tracker = SkipTracker(dataset_name="x", source="x", max_skip_fraction=0.1, min_records=10)
    orders = [[r["__key__"] for r in source.iter_epoch(e, tracker)] for e in range(3)]
    assert all(set(o) == good and len(o) == len(good) for o in orders)
    assert orders[0] != orders[1] != orders[2]
    again = [
        r["__key__"]
        for r in ShardCaptionSource(shards, seed=5, shuffle_buffer=0).iter_epoch(0, tracker)
    ]
    assert again == orders[0]  # deterministic for a seed


def test_dataloader_workers_get_disjoint_samples(tmp_path):
    shards, good = make_shards(str(tmp_path), 4, 6)
    ds = stream(shards, key_of, buffer=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    out = []
    for k in loader:  # the workers alternate; each has 2 shards = 12 samples per epoch
        out.append(k)
        if len(out) == 2 * len(good):
            break
    assert len(set(out[: len(good)])) == len(good) and set(out[: len(good)]) == good
    assert set(out[len(good) :]) == good  # second epoch, again each sample once


def test_more_workers_than_shards(tmp_path, vlog):
    shards, good = make_shards(str(tmp_path), 1, 4)
    ds = stream(shards, key_of)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    it = iter(loader)
    assert {next(it) for _ in range(8)} == good
    del it


def test_seeded_np_rng_unused_by_stream_split(tmp_path):
    # Splitting does not depend on np.random: two differently seeded runs read the same epoch set.
    shards, good = make_shards(str(tmp_path), 2, 3)
    np.random.seed(1)
    a = set(take(stream(shards, key_of), 6))
    np.random.seed(2)
    assert a == set(take(stream(shards, key_of), 6)) == good


def test_write_tar_helper_roundtrip(tmp_path):
    path = write_tar(str(tmp_path / "t.tar"), [("a.txt", b"x")])
    assert os.path.getsize(path) > 0


def test_ranks_times_workers_split(tmp_path):
    # 2 ranks x 2 DataLoader workers (the rank is fixed when the source is built, so it is right
    # in workers of any start method): in each epoch every sample is read exactly once.
    shards, good = make_shards(str(tmp_path), 8, 3)
    per_rank = []
    for rank in range(2):
        source = ShardCaptionSource(shards, seed=11, shuffle_buffer=4, rank=rank, world_size=2)
        ds = CaptionTrainStream([("t", source, 1.0)], key_of, max_skip_fraction=0.1, min_records=10)
        it = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2))
        per_rank.append([next(it) for _ in range(len(good))])  # 2 epochs of this rank
        del it
    half = len(good) // 2
    for epoch in range(2):
        a, b = (set(keys[epoch * half : (epoch + 1) * half]) for keys in per_rank)
        assert len(a) == len(b) == half and not a & b and a | b == good


def test_empty_shards_are_an_error_not_a_hang(tmp_path):
    shard = write_tar(str(tmp_path / "00000.tar"), [])
    with pytest.raises(SkippedRecordsError, match="holds a sample"):
        take(stream([shard], key_of), 1)
