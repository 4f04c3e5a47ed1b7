"""Caption training data, evaluation datasets and the synthetic caption world.

Importing this registers every dataset name (see :mod:`vilseg_d2.data.datasets`); readers of
heavy formats (webdataset) are imported only when used.
"""

from . import datasets  # noqa: F401  (registration side effects)
from .build import build_caption_source, build_caption_train_loader
from .caption_mapper import ViLSegCaptionDatasetMapper
from .datasets import default_synthetic_root, register_caption_dataset, register_synthetic_world
from .skip_tracker import BadRecordError, SkippedRecordsError
from .synthetic import generate_synthetic_world

__all__ = [
    "build_caption_train_loader",
    "build_caption_source",
    "ViLSegCaptionDatasetMapper",
    "register_caption_dataset",
    "register_synthetic_world",
    "default_synthetic_root",
    "generate_synthetic_world",
    "BadRecordError",
    "SkippedRecordsError",
]
