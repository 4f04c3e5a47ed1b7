"""Dataset-level K-means ("kmeans_dataset"): centroids fit on caption-training images by
tools/fit_centroids.py, kept in a file the config names, each pixel given its nearest centroid."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

import vilseg_d2  # noqa: F401
from vilseg_d2.data import generate_synthetic_world
from vilseg_d2.modeling.kmeans import load_centroids, save_centroids

from helpers import load_script, tiny_cfg


def test_centroids_file_round_trip_and_errors(tmp_path):
    path = str(tmp_path / "c.pth")
    c = F.normalize(torch.randn(25, 128), dim=-1)
    save_centroids(path, c, images=3, seed=0)
    loaded = load_centroids(path, 25, 128)
    assert torch.equal(loaded["centroids"], c) and loaded["images"] == 3
    with pytest.raises(ValueError, match="this model needs 10 x 128"):
        load_centroids(path, 10, 128)
    with pytest.raises(FileNotFoundError, match="tools/fit_centroids.py"):
        load_centroids(str(tmp_path / "missing.pth"), 25)
    torch.save({"centroids": c}, str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="not a centroids file"):
        load_centroids(str(tmp_path / "other.pth"), 25)
    with pytest.raises(FileNotFoundError, match="DATASET_CENTROIDS"):
        build_model(tiny_cfg(MODEL__VILSEG__INFERENCE_MODE="kmeans_dataset"))


def test_each_pixel_takes_its_nearest_dataset_centroid(tmp_path):
    model = build_model(tiny_cfg()).eval()
    image = torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8)
    x = model._normalize([image])
    with torch.no_grad():
        emb = F.normalize(model.backbone(x)["emb"][0].flatten(1).t(), dim=-1)  # hw x D
    centroids = emb[torch.randperm(len(emb))[:25]].clone()  # 25 of the image's own pixels
    path = str(tmp_path / "c.pth")
    save_centroids(path, centroids)
    cfg = tiny_cfg(MODEL__VILSEG__INFERENCE_MODE="kmeans_dataset")
    cfg.MODEL.VILSEG.DATASET_CENTROIDS = path
    fitted = build_model(cfg).eval()
    fitted.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = fitted([{"image": image, "vocabulary": ["a", "b", "c"]}])[0]
    assert out["sem_seg"].shape == (3, 128, 160)
    nearest = torch.cdist(emb, centroids).argmin(1).view(8, 10)  # the token grid
    # at the token centres (the cluster logits are upsampled bilinearly between them)
    agree = (out["clusters"][8::16, 8::16] == nearest).float().mean()
    assert agree >= 0.9, agree
    # the same centroids in every image: not re-fit per image as "kmeans" is
    fitted.inference_mode = "kmeans"
    with torch.no_grad():
        per_image = fitted([{"image": image, "vocabulary": ["a", "b", "c"]}])[0]["clusters"]
    assert not torch.equal(per_image, out["clusters"])


def test_fit_centroids_on_caption_images(tmp_path):
    world = str(tmp_path / "world")
    generate_synthetic_world(world, num_train=40, num_val=0)
    manifest = os.path.join(world, "train.jsonl")
    with open(manifest) as f:
        assert len([json.loads(line) for line in f]) == 40
    tool = load_script("tools/fit_centroids.py", "fit_centroids_tool")
    model = build_model(tiny_cfg())
    weights = str(tmp_path / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    out = str(tmp_path / "centroids.pth")
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TEST", "()", "MODEL.WEIGHTS", weights,
            "DATASETS.TRAIN", "('fit_world',)",
            "DATASETS.CAPTION_DATASETS", f"('name=fit_world,manifest={manifest}',)",
            "MODEL.VILSEG.CENTROID_IMAGES", "12", "MODEL.VILSEG.CENTROID_SEED", "3"]  # fmt: skip
    info = tool.main(["--config-file", tiny_cfg.__globals__["TINY_CONFIG"], "--output", out, *opts])
    assert info["images"] == 12 and info["pixels"] == 12 * 64  # 128 x 128 images, patch 16
    saved = load_centroids(out, 25, 128)
    assert saved["datasets"] == ["fit_world"] and saved["seed"] == 3
    assert (saved["centroids"].norm(dim=1) <= 1 + 1e-5).all()  # means of unit vectors
    # the same seed draws the same images and centroids
    again = str(tmp_path / "again.pth")
    tool.main(["--config-file", tiny_cfg.__globals__["TINY_CONFIG"], "--output", again, *opts])
    assert torch.equal(load_centroids(again, 25)["centroids"], saved["centroids"])
