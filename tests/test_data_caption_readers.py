"""Manifest (JSONL / TSV) and COCO captions readers, and caption dataset registration."""

import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from vilseg_d2.data import SkippedRecordsError, register_caption_dataset
from vilseg_d2.data.build import build_caption_source
from vilseg_d2.data.caption_datasets import read_caption_manifest, read_coco_captions
from vilseg_d2.data.caption_stream import CaptionTrainStream
from vilseg_d2.data.skip_tracker import BadRecordError

from data_fixtures import write_images


def _jsonl(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return str(path)


def test_jsonl_manifest_bad_lines_reported_with_numbers(tmp_path, vlog):
    names = write_images(str(tmp_path / "img"), 3)
    path = _jsonl(
        tmp_path / "pairs.jsonl",
        [
            json.dumps({"file_name": names[0], "caption": "a red car"}),  # 1
            json.dumps({"file_name": names[1], "caption": "x" * 10000}),  # 2: long, kept
            "{this is not json",  # 3
            json.dumps(["a", "list"]),  # 4
            json.dumps({"caption": "no image path"}),  # 5
            "   ",  # 6: blank, ignored
            b"\xff\xfe not utf-8",  # 7
            json.dumps({"file_name": names[2], "caption": None}),  # 8: kept; mapper rejects
        ],
    )
    contents = read_caption_manifest(path, str(tmp_path / "img"))
    assert [n for n, _ in contents.bad_lines] == [3, 4, 5, 7]
    assert contents.num_lines == 7 and len(contents.records) == 3
    assert contents.records[0] == {
        "file_name": str(tmp_path / "img" / names[0]),
        "caption": "a red car",
    }
    assert len(contents.records[1]["caption"]) == 10000
    assert "line 3" in vlog.text and "not valid JSON" in vlog.text
    assert "skipped 4 of 7 lines" in vlog.text


def test_tsv_manifest_with_header(tmp_path):
    names = write_images(str(tmp_path), 2)
    path = tmp_path / "pairs.tsv"
    path.write_text(f"filepath\ttitle\n{names[0]}\ta dog\n{names[1]}\ta cat\textra\n")
    contents = read_caption_manifest(str(path), image_key="filepath", caption_key="title")
    assert contents.records == [{"file_name": str(tmp_path / names[0]), "caption": "a dog"}]
    assert contents.bad_lines == [(3, "3 tab-separated fields, the header has 2")]
    with pytest.raises(ValueError, match="name the columns"):
        read_caption_manifest(str(path))  # default keys not in the header
    with pytest.raises(ValueError, match="format"):
        read_caption_manifest(str(tmp_path / "pairs.csv"))


def test_manifest_over_the_bad_line_limit_stops_naming_it(tmp_path):
    names = write_images(str(tmp_path), 1)
    lines = [json.dumps({"file_name": names[0], "caption": "ok"})] * 8 + ["not json"] * 2
    path = _jsonl(tmp_path / "broken.jsonl", lines)
    register_caption_dataset("test_broken_manifest", manifest=path)
    with pytest.raises(SkippedRecordsError, match="broken.jsonl") as e:
        build_caption_source("test_broken_manifest", seed=0, max_skip_fraction=0.1, min_records=5)
    assert "test_broken_manifest" in str(e.value)
    source, weight = build_caption_source(
        "test_broken_manifest", seed=0, max_skip_fraction=0.25, min_records=5
    )
    assert weight == 8


def test_map_style_skips_and_draws_the_next(tmp_path, vlog):
    names = write_images(str(tmp_path), 10)
    lines = [json.dumps({"file_name": n, "caption": f"caption {i}"}) for i, n in enumerate(names)]
    lines += [json.dumps({"file_name": "gone.jpg", "caption": "missing file"})]
    lines += [json.dumps({"file_name": names[0], "caption": "  "})]
    register_caption_dataset("test_map_skip", manifest=_jsonl(tmp_path / "m.jsonl", lines))
    source, _ = build_caption_source("test_map_skip", seed=3)
    ds = CaptionTrainStream(
        [("test_map_skip", source, 1.0)],
        lambda r: _mapped_caption(r),
        max_skip_fraction=0.5,
        min_records=5,
    )
    it = iter(ds)
    out = [next(it) for _ in range(30)]
    assert set(out) == {f"caption {i}" for i in range(10)}
    tracker = ds.trackers["test_map_skip"]
    assert tracker.num_skipped >= 4  # 2 bad records per pass, ~2.5 passes
    assert "gone.jpg: missing file" in vlog.text and "empty caption" in vlog.text


def _mapped_caption(record):
    from vilseg_d2.data.image_io import decode_image, validate_caption

    caption = validate_caption(record["caption"])
    decode_image(record["file_name"])
    return caption


def test_coco_captions(tmp_path):
    names = write_images(str(tmp_path / "train2017"), 3)
    ann = {
        "images": [
            {"id": i + 1, "file_name": n, "height": 32, "width": 36} for i, n in enumerate(names)
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "a man riding a horse"},
            {"id": 11, "image_id": 1, "caption": "a horse with its rider"},
            {"id": 12, "image_id": 2, "caption": "two cats"},
        ],
    }
    path = tmp_path / "captions_train2017.json"
    path.write_text(json.dumps(ann))
    records = read_coco_captions(str(path), str(tmp_path / "train2017"))
    assert len(records) == 2  # image 3 has no caption
    assert records[0]["captions"] == ["a man riding a horse", "a horse with its rider"]
    assert records[0]["file_name"] == os.path.join(str(tmp_path / "train2017"), names[0])
    register_caption_dataset(
        "test_coco_caps", coco_json=str(path), image_root=str(tmp_path / "train2017")
    )
    assert DatasetCatalog.get("test_coco_caps") == records
    assert MetadataCatalog.get("test_coco_caps").caption_source_type == "coco"
    with pytest.raises(ValueError, match="COCO captions"):
        bad = tmp_path / "bad.json"
        bad.write_text("[]")
        read_coco_captions(str(bad), str(tmp_path))


def test_register_caption_dataset_arguments(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        register_caption_dataset("test_none")
    with pytest.raises(ValueError, match="exactly one"):
        register_caption_dataset("test_two", manifest="a.jsonl", shards="b/*.tar")
    with pytest.raises(ValueError, match="image_root"):
        register_caption_dataset("test_coco_no_root", coco_json="c.json")
    # Re-registering a name replaces it.
    register_caption_dataset("test_again", manifest=str(tmp_path / "a.jsonl"))
    register_caption_dataset("test_again", shards=str(tmp_path / "*.tar"))
    assert MetadataCatalog.get("test_again").caption_source_type == "shards"


def test_builtin_caption_datasets_registered():
    meta = {n: MetadataCatalog.get(n) for n in ["cc3m_train", "cc12m_train", "coco_captions_train"]}
    assert meta["cc3m_train"].caption_source_type == "shards"
    assert meta["cc12m_train"].shards.endswith(os.path.join("cc12m", "*.tar"))
    assert meta["coco_captions_train"].caption_source_type == "coco"
    assert meta["coco_captions_train"].coco_json.endswith("captions_train2017.json")


def test_missing_data_errors_say_what_to_do(tmp_path):
    register_caption_dataset(
        "test_absent", manifest=str(tmp_path / "absent.jsonl"), missing_hint="run X"
    )
    with pytest.raises(FileNotFoundError, match="run X"):
        DatasetCatalog.get("test_absent")
    with pytest.raises(FileNotFoundError, match="run X"):
        build_caption_source("test_absent", seed=0)
    with pytest.raises(KeyError, match="register_caption_dataset"):
        build_caption_source("test_never_registered", seed=0)


def test_bad_record_error_is_value_error():
    assert issubclass(BadRecordError, ValueError)
