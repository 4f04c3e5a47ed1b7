"""A batch of training dicts that crosses from a DataLoader worker to the trainer as a few tensors.

Detectron2's loaders hand the model a list of dicts, one per image. From a worker process every
tensor of that list travels through its own shared-memory segment: 256 segments a batch for the
global views of configs/vilseg_tiny.yaml, 2,048 with the local crops and g(x), each opened and
mapped again by the trainer (0.3-2 s of a 2-core machine's step, docs/benchmarks.md).
:func:`caption_batch_collator` keeps the list of dicts, but when it is pickled, the tensors of each
key are stacked into one; the trainer's side gets the same list of dicts back, each tensor a view
of its key's stack. Without workers nothing is stacked or copied.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

__all__ = ["CaptionBatch", "caption_batch_collator"]


def _stackable(values: List[Any]) -> bool:
    """Tensors (or equally long lists of tensors) of one shape and dtype."""
    if all(isinstance(v, torch.Tensor) for v in values):
        first = values[0]
        return all(v.shape == first.shape and v.dtype == first.dtype for v in values)
    if all(isinstance(v, (list, tuple)) for v in values):
        n = len(values[0])
        flat = [t for v in values for t in v]
        return n > 0 and all(len(v) == n for v in values) and _stackable(flat)
    return False


class CaptionBatch(list):
    """A list of training dicts (this rank's batch) that pickles as one stacked tensor per key.

    Keys whose values are tensors of one shape (``image``, ``transformed_image``) or equally long
    lists of such tensors (``local_crops``) are stacked; other values (captions, flags) go as
    lists. Unpickled, it is a plain ``list`` of dicts with the same keys and values.
    """

    def __reduce__(self):
        if not self:
            return (list, ())
        keys = list(self[0].keys())
        if any(list(d.keys()) != keys for d in self):  # not one layout: as a plain list
            return (list, (list(self),))
        packed: Dict[str, Any] = {}
        for key in keys:
            values = [d[key] for d in self]
            if not _stackable(values):
                packed[key] = ("list", values)
            elif isinstance(values[0], torch.Tensor):
                packed[key] = ("tensor", torch.stack(values))
            else:
                packed[key] = ("tensors", torch.stack([torch.stack(list(v)) for v in values]))
        return (_unpack, (len(self), packed))


def _unpack(size: int, packed: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The list of dicts :meth:`CaptionBatch.__reduce__` packed."""
    batch: List[Dict[str, Any]] = [{} for _ in range(size)]
    for key, (kind, value) in packed.items():
        for i, d in enumerate(batch):
            d[key] = list(value[i].unbind(0)) if kind == "tensors" else value[i]
    return batch


def caption_batch_collator(samples: List[Dict[str, Any]]) -> CaptionBatch:
    """The DataLoader's ``collate_fn``: the samples as they are, in a :class:`CaptionBatch`."""
    return CaptionBatch(samples)
