"""COCO-Stuff 164k val (the 5000 COCO val2017 images): ``coco_stuff_164k_sem_seg_val``, 171
classes (80 things + 91 stuff). Files written by ``datasets/prepare_coco_stuff_164k.py``.

The dataset's class names ("wall-concrete", "sky-other", "playingfield") name the metrics; the
text encoder gets readable ones ("concrete wall", "sky", "playing field"):
:data:`COCO_STUFF_PROMPT_NAMES`, in the metadata as ``prompt_names``.
"""

from __future__ import annotations

import os

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .register_sem_seg import prepare_hint, register_sem_seg_dataset

__all__ = [
    "COCO_STUFF_CATEGORIES",
    "COCO_STUFF_CLASSES",
    "COCO_STUFF_PROMPT_NAMES",
    "COCO_STUFF_UNSEEN_CLASSES",
    "register_coco_stuff_164k",
]

# The 91 stuff classes of COCO-Stuff, ids 92..182 (as in the dataset's labels.txt).
_STUFF_NAMES = [
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net",
    "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield",
    "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea",
    "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]  # fmt: skip
assert len(_STUFF_NAMES) == 91

# (COCO id, name) of the 171 classes in contiguous label order: the 80 things (Detectron2's COCO
# categories) then the 91 stuff classes. Masks store COCO id - 1; 255 = unlabeled.
COCO_STUFF_CATEGORIES = [(c["id"], c["name"]) for c in COCO_CATEGORIES if c["isthing"]] + [
    (92 + i, n) for i, n in enumerate(_STUFF_NAMES)
]
COCO_STUFF_CLASSES = [n for _, n in COCO_STUFF_CATEGORIES]
# Readable names for the prompts of the classes whose dataset names are not: "x-other" / "x-stuff"
# become "x", "floor-wood" becomes "wooden floor", run-together words are split, "hair drier" is
# spelled as usual. Every other class keeps its name.
COCO_STUFF_PROMPT_NAMES = {
    "hair drier": "hair dryer",
    "building-other": "building",
    "ceiling-other": "ceiling",
    "ceiling-tile": "tiled ceiling",
    "desk-stuff": "desk",
    "door-stuff": "door",
    "floor-marble": "marble floor",
    "floor-other": "floor",
    "floor-stone": "stone floor",
    "floor-tile": "tiled floor",
    "floor-wood": "wooden floor",
    "food-other": "food",
    "furniture-other": "furniture",
    "ground-other": "ground",
    "mirror-stuff": "mirror",
    "plant-other": "plant",
    "playingfield": "playing field",
    "sky-other": "sky",
    "solid-other": "solid",
    "structural-other": "structure",
    "textile-other": "textile",
    "wall-brick": "brick wall",
    "wall-concrete": "concrete wall",
    "wall-other": "wall",
    "wall-panel": "wall panel",
    "wall-stone": "stone wall",
    "wall-tile": "tiled wall",
    "wall-wood": "wooden wall",
    "water-other": "water",
    "waterdrops": "water drops",
    "window-blind": "window blind",
    "window-other": "window",
}
# Unseen classes of the zero-shot protocol (paper section 4.1).
COCO_STUFF_UNSEEN_CLASSES = [
    "frisbee", "skateboard", "cardboard", "carrot", "scissors", "suitcase", "giraffe", "cow",
    "road", "wall-concrete", "tree", "grass", "river", "clouds", "playingfield",
]  # fmt: skip


def register_coco_stuff_164k(root: str) -> None:
    """Register ``coco_stuff_164k_sem_seg_val`` under ``root`` (``$DETECTRON2_DATASETS``)."""
    register_sem_seg_dataset(
        "coco_stuff_164k_sem_seg_val",
        image_dir=os.path.join(root, "coco", "val2017"),
        gt_dir=os.path.join(root, "coco", "stuffthingmaps_detectron2", "val2017"),
        stuff_classes=COCO_STUFF_CLASSES,
        unseen_classes=COCO_STUFF_UNSEEN_CLASSES,
        prompt_names=COCO_STUFF_PROMPT_NAMES,
        missing_hint=prepare_hint(
            "prepare_coco_stuff_164k.py",
            root,
            f"val2017.zip is unzipped in {os.path.join(root, 'coco')} and "
            f"stuffthingmaps_trainval2017.zip into {os.path.join(root, 'coco', 'stuffthingmaps')}",
        ),
        root=root,
    )
