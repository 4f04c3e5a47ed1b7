"""The training views of ViL-Seg built from one image-caption record (DESIGN section 5)."""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from .image_io import decode_image, validate_caption
from .skip_tracker import BadRecordError
from .transforms import RandomColorAffine, RandomGrayscale, RandomResizedCrop

__all__ = ["ViLSegCaptionDatasetMapper"]

logger = logging.getLogger(__name__)


def _to_chw_tensor(img: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 array -> 3×H×W uint8 tensor (contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class ViLSegCaptionDatasetMapper:
    """Map a caption record to the views ViL-Seg trains on.

    Input record (one of the readers' outputs): ``"file_name"`` (path) or ``"image_bytes"``
    (encoded image), and ``"caption"`` (str or UTF-8 bytes) or ``"captions"`` (list; one is
    drawn per call, as for COCO captions).

    Output dict:

    * ``"image"``: the global view x, uint8 tensor 3×G×G (G = ``global_size``), channels in
      ``image_format`` order; a random resized crop of area fraction ``global_scale``, recoloured
      with ``global_color_mul`` / ``global_color_add`` and turned grayscale with probability
      ``global_grayscale_prob`` (0 = off, the paper). This view meets the caption in L_cross: the
      recolouring makes the caption's colour words unreliable, so that they cannot stand in for
      the objects' names.
    * ``"local_crops"``: list of ``num_local_crops`` uint8 tensors 3×L×L, random resized crops
      of area fraction ``local_scale`` of the decoded image (the multi-crop views), each then
      recoloured like g(x) with ``local_color_mul`` / ``local_color_add`` and turned grayscale
      with probability ``local_grayscale_prob`` (DINO's colour augmentation of the views: the
      self-distillation target then cannot be met from colour alone; 0 = off).
    * ``"transformed_image"``: g(x), uint8 3×G×G: per channel x * U(1-m, 1+m) + U(-a, a) * 255,
      clipped to [0, 255], then flipped horizontally with probability ``flip_prob``.
    * ``"flip"``: bool, whether ``transformed_image`` was flipped (the model undoes it on the
      features: ``feat.flip(-1)``). These two only with ``transformed_view``.
    * ``"caption"``: str.

    Randomness comes from ``np.random`` as in Detectron2's augmentations; the caption stream
    (:class:`CaptionTrainStream`) seeds it per record, which makes runs reproducible and
    resumable.

    Raises:
        BadRecordError: from ``__call__`` for a record that cannot be used (missing or corrupt
            image, empty or binary caption); the caption loaders skip and count these.
    """

    @configurable
    def __init__(
        self,
        *,
        global_size: int,
        global_scale: tuple[float, float],
        num_local_crops: int,
        local_size: int,
        local_scale: tuple[float, float],
        color_mul: float,
        color_add: float,
        flip_prob: float,
        local_color_mul: float = 0.0,
        local_color_add: float = 0.0,
        local_grayscale_prob: float = 0.0,
        global_color_mul: float = 0.0,
        global_color_add: float = 0.0,
        global_grayscale_prob: float = 0.0,
        transformed_view: bool = True,
        image_format: str = "BGR",
    ):
        """
        Args:
            global_size: side of the global view (and of g(x)).
            global_scale: area-fraction range of the global crop (DINO: (0.4, 1.0)).
            num_local_crops: k, the number of local views (paper: 6).
            local_size: side of the local views.
            local_scale: area-fraction range of the local crops (DINO: (0.05, 0.4)).
            color_mul: m of g(x)'s multiplicative factor U(1-m, 1+m).
            color_add: a of g(x)'s additive offset U(-a, a) * 255.
            local_color_mul, local_color_add: the same per-channel colour change for each local
                crop (0 = none).
            local_grayscale_prob: probability that a local crop is made grayscale.
            global_color_mul, global_color_add, global_grayscale_prob: the same for the global
                view x (before g(x) is made from it).
            flip_prob: probability that g(x) flips horizontally.
            transformed_view: make g(x) (``transformed_image`` and ``flip``); only L_cluster
                reads it.
            image_format: "BGR" or "RGB", the channel order of the output (cfg.INPUT.FORMAT).
        """
        if image_format not in ("BGR", "RGB"):
            raise ValueError(
                f"ViLSegCaptionDatasetMapper supports INPUT.FORMAT 'BGR' or 'RGB', got "
                f"{image_format!r}."
            )
        if num_local_crops < 0:
            raise ValueError(f"NUM_LOCAL_CROPS must be >= 0, got {num_local_crops}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"FLIP_PROB must be in [0, 1], got {flip_prob}")
        self.global_size = int(global_size)
        self.local_size = int(local_size)
        self.num_local_crops = int(num_local_crops)
        self.transformed_view = bool(transformed_view)
        self.image_format = image_format
        self.global_crop = RandomResizedCrop(self.global_size, scale=tuple(global_scale))
        self.local_crop = RandomResizedCrop(self.local_size, scale=tuple(local_scale))
        self.color = RandomColorAffine(color_mul, color_add)
        self.flip = T.RandomFlip(prob=flip_prob, horizontal=True, vertical=False)
        self.local_color = _recolouring(
            local_color_mul, local_color_add, local_grayscale_prob, image_format
        )
        self.global_color = _recolouring(
            global_color_mul, global_color_add, global_grayscale_prob, image_format
        )
        # Decode large JPEGs at a reduced scale that still covers the global crop at full
        # resolution (the crop covers >= sqrt(min scale) of the side).
        self._decode_min_size = int(np.ceil(self.global_size / np.sqrt(min(global_scale))))
        logger.info(
            f"ViLSegCaptionDatasetMapper: global {self.global_size}px scale {tuple(global_scale)}, "
            f"{self.num_local_crops} local {self.local_size}px scale {tuple(local_scale)}, "
            f"local colour mul ±{local_color_mul}, add ±{local_color_add}, "
            f"grayscale p={local_grayscale_prob}; "
            f"global colour mul ±{global_color_mul}, add ±{global_color_add}, "
            f"grayscale p={global_grayscale_prob}; "
            f"g(x): mul ±{color_mul}, add ±{color_add}, flip p={flip_prob}; {image_format}"
        )

    @classmethod
    def from_config(
        cls, cfg, is_train: bool = True, *, local_crops: bool = True, transformed_view: bool = True
    ) -> dict:
        """``local_crops=False`` / ``transformed_view=False`` leave out the views of L_vision /
        L_cluster (for training steps without them)."""
        v = cfg.INPUT.VILSEG
        return {
            "global_size": v.GLOBAL_SIZE,
            "global_scale": tuple(v.GLOBAL_SCALE),
            "num_local_crops": v.NUM_LOCAL_CROPS if local_crops else 0,
            "transformed_view": transformed_view,
            "local_size": v.LOCAL_SIZE,
            "local_scale": tuple(v.LOCAL_SCALE),
            "color_mul": v.COLOR_MUL,
            "color_add": v.COLOR_ADD,
            "local_color_mul": v.LOCAL_COLOR_MUL,
            "local_color_add": v.LOCAL_COLOR_ADD,
            "local_grayscale_prob": v.LOCAL_GRAYSCALE_PROB,
            "global_color_mul": v.GLOBAL_COLOR_MUL,
            "global_color_add": v.GLOBAL_COLOR_ADD,
            "global_grayscale_prob": v.GLOBAL_GRAYSCALE_PROB,
            "flip_prob": v.FLIP_PROB,
            "image_format": cfg.INPUT.FORMAT,
        }

    @staticmethod
    def _recolour(recolouring: Optional[T.AugmentationList], view: np.ndarray) -> np.ndarray:
        """One view through a colour change and random grayscale (drawn per view); None = as is."""
        if recolouring is None:
            return view
        aug = T.AugInput(view)
        recolouring(aug)
        return aug.image

    def _caption(self, record: dict) -> str:
        if "captions" in record:
            captions = record["captions"]
            if not isinstance(captions, (list, tuple)) or len(captions) == 0:
                raise BadRecordError("no caption")
            caption = captions[np.random.randint(len(captions))]
        elif "caption" in record:
            caption = record["caption"]
        else:
            raise BadRecordError("no caption")
        return validate_caption(caption)

    def __call__(self, record: dict) -> dict:
        """
        Args:
            record: a caption record (see the class docstring).

        Returns:
            dict: ``image``, ``local_crops``, ``caption``, and with ``transformed_view``,
            ``transformed_image`` and ``flip``.

        Raises:
            BadRecordError: the record cannot be used.
        """
        caption = self._caption(record)
        if "image_bytes" in record:
            data = record["image_bytes"]
        elif record.get("file_name"):
            data = record["file_name"]
        else:
            raise BadRecordError("no image")
        img = decode_image(data, min_size=self._decode_min_size)  # H×W×3 uint8 RGB
        if self.image_format == "BGR":
            img = np.ascontiguousarray(img[:, :, ::-1])

        global_view = self.global_crop.get_transform(img).apply_image(img)
        local_views = [
            self.local_crop.get_transform(img).apply_image(img) for _ in range(self.num_local_crops)
        ]
        local_views = [self._recolour(self.local_color, v) for v in local_views]
        global_view = self._recolour(self.global_color, global_view)
        sample = {
            "image": _to_chw_tensor(global_view),
            "local_crops": [_to_chw_tensor(v) for v in local_views],
            "caption": caption,
        }
        if self.transformed_view:
            color_tfm = self.color.get_transform(global_view)
            flip_tfm = self.flip.get_transform(global_view)
            transformed = T.TransformList([color_tfm, flip_tfm]).apply_image(global_view)
            sample["transformed_image"] = _to_chw_tensor(transformed)
            sample["flip"] = isinstance(flip_tfm, T.HFlipTransform)
        return sample


def _recolouring(
    mul: float, add: float, grayscale_prob: float, image_format: str
) -> Optional[T.AugmentationList]:
    """A per-channel colour change then random grayscale; None when all three are 0."""
    if mul <= 0 and add <= 0 and grayscale_prob <= 0:
        return None
    return T.AugmentationList(
        [RandomColorAffine(mul, add), RandomGrayscale(grayscale_prob, image_format)]
    )
