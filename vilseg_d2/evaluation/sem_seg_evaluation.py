"""SemSegEvaluator plus the unseen-class metrics of the paper's protocol (section 4.1)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.evaluation.sem_seg_evaluation import load_image_into_numpy_array

__all__ = ["ViLSegSemSegEvaluator"]


class ViLSegSemSegEvaluator(SemSegEvaluator):
    """Detectron2's ``SemSegEvaluator`` (mIoU, fwIoU, mACC, pACC, per-class IoU) plus
    ``mIoU_unseen`` and ``pACC_unseen`` over the dataset metadata's ``unseen_classes``.

    With ``classes`` set to a subset of the dataset's classes (the zero-shot reading of the
    SPNet/ZS3 protocol that the paper follows: only the unseen classes are candidates),
    predictions index into that subset and ground-truth pixels of the other classes are ignored.
    The mapping is by position only: output channel k is ``classes[k]``, whatever names the model
    was prompted with (e.g. the dataset's ``prompt_names``); metrics keep the dataset's names.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        classes: Optional[Sequence[str]] = None,
    ):
        """
        Args:
            dataset_name, distributed, output_dir: as :class:`SemSegEvaluator`.
            classes: the classes the model chooses among, in the order of its output channels:
                a subset of ``stuff_classes`` (spelled as there) in any order; None = all of them.
        """
        meta = MetadataCatalog.get(dataset_name)
        dataset_classes = list(meta.stuff_classes)
        self._lut = None
        loading_fn = load_image_into_numpy_array
        if classes is not None and list(classes) != dataset_classes:
            missing = [c for c in classes if c not in dataset_classes]
            if missing:
                raise ValueError(
                    f"Classes {missing} are not classes of {dataset_name}: give names from its "
                    f"stuff_classes (not its prompt_names)."
                )
            lut = np.full(max(256, len(dataset_classes) + 1), meta.ignore_label, dtype=np.int64)
            for new, name in enumerate(classes):
                lut[dataset_classes.index(name)] = new
            self._lut = lut
            loading_fn = self._load_remapped
        super().__init__(dataset_name, distributed, output_dir, sem_seg_loading_fn=loading_fn)
        if self._lut is not None:
            self._class_names = list(classes)
            self._num_classes = len(classes)
        unseen = list(meta.get("unseen_classes", []) or [])
        self._unseen = [self._class_names.index(c) for c in unseen if c in self._class_names]

    def _load_remapped(self, filename: str, dtype=int) -> np.ndarray:
        gt = load_image_into_numpy_array(filename, copy=True, dtype=dtype)
        return self._lut[gt]

    def evaluate(self):
        results = super().evaluate()
        if results is None or not self._unseen:
            return results
        conf = self._conf_matrix[:-1, :-1].astype(float)  # rows: prediction, columns: ground truth
        tp = conf.diagonal()
        pos_gt = conf.sum(axis=0)
        pos_pred = conf.sum(axis=1)
        unseen = np.array(self._unseen)
        valid = unseen[pos_gt[unseen] > 0]
        if len(valid):
            iou = tp[valid] / (pos_gt[valid] + pos_pred[valid] - tp[valid])
            results["sem_seg"]["mIoU_unseen"] = 100 * float(iou.mean())
            results["sem_seg"]["pACC_unseen"] = 100 * float(tp[valid].sum() / pos_gt[valid].sum())
        return results
