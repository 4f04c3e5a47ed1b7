"""Dataset-level K-means: centroids fit once on the pixel embeddings of caption-training images,
for ``MODEL.VILSEG.INFERENCE_MODE "kmeans_dataset"`` (``tools/fit_centroids.py``)."""

from __future__ import annotations

import logging
from typing import Dict, Iterator

import torch
import torch.nn.functional as F
from detectron2.data import transforms as T
from detectron2.structures import ImageList

from ..data.build import build_caption_train_loader
from ..data.image_io import decode_image
from ..data.skip_tracker import BadRecordError
from ..modeling.inputs import inference_image
from ..modeling.kmeans import kmeans, save_centroids

__all__ = [
    "CentroidImageMapper",
    "caption_images",
    "fit_dataset_centroids",
    "write_dataset_centroids",
]

logger = logging.getLogger(__name__)


class CentroidImageMapper:
    """A caption record -> ``{"image": 3 x H x W uint8}`` at the test size (Detectron2's
    ``ResizeShortestEdge`` of ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), channels in
    ``INPUT.FORMAT`` order: what the model sees at inference. Captions are not read."""

    def __init__(self, cfg):
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.bgr = cfg.INPUT.FORMAT == "BGR"

    def __call__(self, record: Dict) -> Dict:
        data = record.get("image_bytes") or record.get("file_name")
        if not data:
            raise BadRecordError("no image")
        image = decode_image(data)  # H x W x 3 uint8 RGB
        if self.bgr:
            image = image[:, :, ::-1]
        image = self.resize.get_transform(image).apply_image(image)
        return {"image": torch.from_numpy(image.transpose(2, 0, 1).copy())}


def caption_images(cfg, count: int, seed: int) -> Iterator[torch.Tensor]:
    """``count`` images of ``DATASETS.TRAIN`` (the caption datasets), drawn by the caption stream
    seeded with ``seed``, each 3 x H x W uint8 at the test size."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SEED = int(seed)
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.DATALOADER.NUM_WORKERS = 0
    loader = build_caption_train_loader(cfg, CentroidImageMapper(cfg))
    for _, batch in zip(range(count), loader):
        yield batch[0]["image"]


@torch.no_grad()
def fit_dataset_centroids(model, images, *, num_clusters: int, iters: int = 100, seed: int = 0):
    """K-means++ then Lloyd on the unit-norm pixel embeddings of ``images``.

    Args:
        model: a :class:`~vilseg_d2.modeling.ViLSeg` (its backbone and normalisation are used).
        images: an iterable of 3 x H x W uint8 images (e.g. :func:`caption_images`).
        num_clusters: C, as the model's clustering head.
        iters: Lloyd iterations at most.
        seed: the k-means++ draws.

    Returns:
        dict: ``centroids`` (C x D), ``pixels`` (embeddings clustered), ``images`` (count).
    """
    model.eval()
    patch = model.backbone.size_divisibility
    embeddings, count = [], 0
    for image in images:
        x = model._normalize([inference_image(image)])
        x = ImageList.from_tensors([x[0]], size_divisibility=patch).tensor
        emb = model.backbone.forward_tokens(x)["emb"].float()  # 1 x D x h x w
        embeddings.append(F.normalize(emb[0].flatten(1).t(), dim=-1))  # hw x D
        count += 1
    if count == 0:
        raise ValueError("No image to fit the dataset centroids on: DATASETS.TRAIN gave none.")
    pixels = torch.cat(embeddings)
    logger.info(f"K-means (k={num_clusters}) on {len(pixels)} pixel embeddings of {count} images.")
    _, centroids = kmeans(pixels, num_clusters, iters, seed)
    return {"centroids": centroids, "pixels": len(pixels), "images": count}


def write_dataset_centroids(cfg, model, output: str, *, weights: str, iters: int = 100) -> Dict:
    """Fit the centroids of ``model`` (with its weights loaded from ``weights``) on
    ``MODEL.VILSEG.CENTROID_IMAGES`` images of ``cfg``'s caption datasets, drawn with
    ``CENTROID_SEED``, and write them to ``output``. Returns what the file records besides them."""
    v = cfg.MODEL.VILSEG
    images = caption_images(cfg, int(v.CENTROID_IMAGES), int(v.CENTROID_SEED))
    fitted = fit_dataset_centroids(
        model, images, num_clusters=int(v.NUM_CLUSTERS), iters=iters, seed=int(v.CENTROID_SEED)
    )
    info = {
        "weights": weights,
        "datasets": list(cfg.DATASETS.TRAIN),
        "images": fitted["images"],
        "pixels": fitted["pixels"],
        "seed": int(v.CENTROID_SEED),
    }
    save_centroids(output, fitted["centroids"], **info)
    logger.info(
        f"Wrote {tuple(fitted['centroids'].shape)} centroids from {fitted['pixels']} pixel "
        f"embeddings of {fitted['images']} images of {', '.join(info['datasets'])} to {output}."
    )
    return info
