"""Training on one's own captions from the command line: DATASETS.CAPTION_DATASETS, the image-root
check before training, the first unreadable records logged, and the warning of a run that ends
before the auxiliary objectives join."""

import json
import os
import subprocess
import sys

import pytest
from detectron2.data import MetadataCatalog

from vilseg_d2.config import get_vilseg_cfg
from vilseg_d2.data.build import build_caption_source
from vilseg_d2.data.datasets.register_captions import parse_caption_dataset_spec
from vilseg_d2.engine import ViLSegTrainer
from vilseg_d2.engine.trainer import _warn_if_aux_objectives_never_train

from data_fixtures import make_shards, write_images
from helpers import ROOT, TINY_CONFIG

SMALL = ["MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", 4, "DATALOADER.NUM_WORKERS", 0,
         "INPUT.VILSEG.NUM_LOCAL_CROPS", 2, "DATASETS.TEST", ()]  # fmt: skip


def own_pairs(root, *, bad=()):
    """``root/pairs.jsonl`` listing ``images/imgNNN.jpg`` (8 images in ``root/images``), then
    the ``(file name, bytes or None)`` of ``bad`` (None: a missing file)."""
    names = ["images/" + n for n in write_images(os.path.join(root, "images"), 8)]
    for name, data in bad:
        if data is not None:
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
        names.append(name)
    with open(os.path.join(root, "pairs.jsonl"), "w") as f:
        for i, n in enumerate(names):
            f.write(json.dumps({"file_name": n, "caption": f"pair {i}"}) + "\n")
    return os.path.join(root, "pairs.jsonl")


def loader_cfg(name, spec, *opts):
    return get_vilseg_cfg(
        TINY_CONFIG,
        SMALL + ["DATASETS.TRAIN", (name,), "DATASETS.CAPTION_DATASETS", (spec,), *opts],
    )


def test_spec_fields():
    spec = parse_caption_dataset_spec(
        " name=s , shards=/d/{00000..00003}.tar::/e/{a,b}.tar, num_samples=40 "
    )
    assert spec == {"name": "s", "shards": "/d/{00000..00003}.tar::/e/{a,b}.tar", "num_samples": 40}
    for bad, message in [
        ("manifest=/d/p.jsonl", "no name="),
        ("name=x,manifest=/d/p.jsonl,root=/d", "unknown field 'root'"),
        ("name=x,/d/p.jsonl", "not field=value"),
        ("name=x,shards=/d,num_samples=many", "not an integer"),
        ("name=x,name=y,shards=/d", "given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_caption_dataset_spec(bad)


def test_manifest_from_config_keys_and_the_first_bad_records_logged(tmp_path, vlog):
    manifest = own_pairs(str(tmp_path), bad=[("gone.jpg", None), ("html.jpg", b"<html>404</html>")])
    cfg = loader_cfg("test_own_pairs", f"name=test_own_pairs,manifest={manifest}")
    it = iter(ViLSegTrainer.build_train_loader(cfg))
    captions = {s["caption"] for _ in range(6) for s in next(it)}  # 24 samples: >2 passes of 10
    assert captions == {f"pair {i}" for i in range(8)}
    assert MetadataCatalog.get("test_own_pairs").image_root == str(
        tmp_path
    )  # the manifest's folder
    assert "1 of the first 10 image files listed in" in vlog.text  # before training: gone.jpg
    skips = [r.getMessage() for r in vlog.records if "Skipped a bad record" in r.getMessage()]
    assert any(f"{tmp_path / 'gone.jpg'}: missing file" in m for m in skips)
    assert any(f"{tmp_path / 'html.jpg'}: not an image" in m for m in skips)
    assert "DATALOADER.MAX_SKIP_FRACTION" in skips[0]  # the first says what happens to the others


def test_doubled_image_folder_is_an_error_with_the_fix(tmp_path):
    manifest = own_pairs(str(tmp_path))
    doubled = f"name=test_own_doubled,manifest={manifest},image_root={tmp_path / 'images'}"
    with pytest.raises(FileNotFoundError) as e:
        ViLSegTrainer.build_train_loader(loader_cfg("test_own_doubled", doubled))
    msg = str(e.value)
    assert str(tmp_path / "images" / "images" / "img000.jpg") in msg  # the first missing path
    assert (
        f"image_root={tmp_path}," in msg
        and "appears twice" in msg
        and "DATASETS.CAPTION_DATASETS" in msg
    )

    other = tmp_path / "elsewhere"
    other.mkdir()
    wrong = f"name=test_own_wrong_root,manifest={manifest},image_root={other}"
    with pytest.raises(
        FileNotFoundError, match=f"relative to the folder of .*set image_root={tmp_path} "
    ):
        ViLSegTrainer.build_train_loader(loader_cfg("test_own_wrong_root", wrong))


def test_shard_pattern_from_config_keys(tmp_path):
    _, good = make_shards(str(tmp_path / "shards"), 2, 4)
    spec = f"name=test_own_shards,shards={tmp_path}/shards/{{00000..00001}}.tar,num_samples=8"
    cfg = loader_cfg("test_own_shards", spec, "DATALOADER.SHUFFLE_BUFFER_SIZE", 4)
    batch = next(iter(ViLSegTrainer.build_train_loader(cfg)))
    assert len(batch) == 4 and {s["caption"] for s in batch} <= good
    assert MetadataCatalog.get("test_own_shards").num_samples == 8


def test_unregistered_name_says_how_to_register():
    with pytest.raises(KeyError, match="DATASETS.CAPTION_DATASETS") as e:
        build_caption_source("test_own_never_registered", seed=0)
    assert "synthetic_captions_train" in str(e.value) and "voc_2012" not in str(e.value)


@pytest.mark.parametrize(
    "opts, warned",
    [
        (["SOLVER.MAX_ITER", 20], True),
        (["SOLVER.MAX_ITER", 1001], False),
        (
            [
                "SOLVER.MAX_ITER",
                20,
                "MODEL.VILSEG.VISION_WEIGHT",
                0.0,
                "MODEL.VILSEG.CLUSTER_WEIGHT",
                0.0,
            ],
            False,
        ),
    ],
)
def test_aux_objectives_warning(opts, warned, vlog):
    _warn_if_aux_objectives_never_train(get_vilseg_cfg(TINY_CONFIG, ["MODEL.DEVICE", "cpu", *opts]))
    assert ("L_vision and L_cluster will not train" in vlog.text) == warned
    if warned:
        assert "AUX_WARMUP_ITERS[0]" in vlog.text and "iteration 1000" in vlog.text


def test_train_net_on_a_manifest_from_the_command_line(tmp_path):
    manifest = own_pairs(str(tmp_path / "data"))
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"),
           "--config-file", TINY_CONFIG, *[str(x) for x in SMALL],
           "DATASETS.TRAIN", '("my_pairs",)',
           "DATASETS.CAPTION_DATASETS", f'("name=my_pairs,manifest={manifest}",)',
           "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=600
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert (out / "model_final.pth").exists()
    assert "L_vision and L_cluster will not train" in log
