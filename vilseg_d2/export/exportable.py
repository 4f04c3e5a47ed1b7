"""``ExportableViLSeg``: ViL-Seg's image branch with one vocabulary baked in, as a module a tracer
(``torch.onnx.export``, ``torch.jit.trace``) turns into a graph of the image alone.

It runs :meth:`ViLSegSegmenter.segment` itself, the code ``ViLSeg.inference`` runs: the backbone,
the clustering head, region pooling, the text similarity, the background rules and the mask
refinement. The text side is done once, at construction: the vocabulary's class embeddings
(prompt templates and synonyms averaged, ``model.text_encoder.class_embeddings``) and the logit
scale are constants of the graph.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..modeling.attention import ViLSegSelfAttention
from ..modeling.meta_arch import pixel_encoder
from ..modeling.segmenter import ViLSegSegmenter
from ..modeling.vocabulary import background_index, to_vocabulary_order

__all__ = ["EXPORTABLE_MODES", "ExportableViLSeg", "check_exportable", "math_attention"]

# K-means is not exported: its k-means++ seeding draws from a seeded random generator, and its
# Lloyd iterations stop early; both would be ONNX loops over random draws that onnxruntime could
# not reproduce. The clustering head ("online") and "dense" are straight-line graphs.
EXPORTABLE_MODES = ("online", "dense")


def check_exportable(segmenter: ViLSegSegmenter) -> None:
    """Raise a ``ValueError`` saying what to change unless ``segmenter``'s inference can be
    exported: the "online" or "dense" mode, whole images (no sliding window)."""
    if segmenter.mode not in EXPORTABLE_MODES:
        raise ValueError(
            f"MODEL.VILSEG.INFERENCE_MODE {segmenter.mode!r} cannot be exported (per-image "
            "K-means draws random seeds and stops early: no sane ONNX graph); export "
            f"{' or '.join(repr(m) for m in EXPORTABLE_MODES)}, e.g. add "
            "MODEL.VILSEG.INFERENCE_MODE online."
        )
    if segmenter.window_size > 0:
        raise ValueError(
            f"MODEL.VILSEG.SLIDING_WINDOW_SIZE {segmenter.window_size}: sliding windows are not "
            "exported (their number depends on the image size). Add "
            "MODEL.VILSEG.SLIDING_WINDOW_SIZE 0: the graph segments whole images of any size."
        )


class ExportableViLSeg(nn.Module):
    """A ViL-Seg model's inference for one vocabulary, traceable with dynamic image sizes.

    ``forward(image, output_size)`` takes the resized image as ``ViLSeg.inference`` does (what
    Detectron2's ``ResizeShortestEdge`` of ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST`` gives, 0-255
    values in ``INPUT.FORMAT`` channel order) and the size of the original image, and returns
    what the model returns: normalisation, padding to the patch and the resizing to
    ``output_size`` happen inside.

    Args:
        model: a built :class:`~vilseg_d2.modeling.ViLSeg` (its weights loaded), in eval mode.
        vocabulary: K class names, synonyms separated by commas; with the background rules on,
            one of them is "background" (assigned by the rules, not by its text).
    """

    def __init__(self, model: nn.Module, vocabulary: Sequence[str]):
        super().__init__()
        segmenter = model.segmenter
        check_exportable(segmenter)
        self.vocabulary: List[str] = list(vocabulary)
        self.background: Optional[int] = background_index(self.vocabulary, segmenter)
        named = [c for i, c in enumerate(self.vocabulary) if i != self.background]
        self.backbone = model.backbone
        self.clustering_head = model.clustering_head
        # Settings only; a copy, so that changing the model's later does not change this one's.
        self.segmenter = ViLSegSegmenter(
            mode=segmenter.mode,
            num_clusters=segmenter.num_clusters,
            bg_threshold=segmenter.bg_threshold,
            bg_global_similarity=segmenter.bg_global_similarity,
            refine_iters=segmenter.refine_iters,
            refine_dilations=segmenter.refine_dilations,
        )
        with torch.no_grad():
            text = model.text_encoder.class_embeddings(named).float()  # K' x D
            scale = model.scale().detach().float()
        self.register_buffer("text", text.clone(), persistent=False)
        self.register_buffer("logit_scale", scale.clone(), persistent=False)
        self.register_buffer("pixel_mean", model.pixel_mean.float().clone(), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.float().clone(), persistent=False)

    @property
    def num_classes(self) -> int:
        """K, the classes of the output (the background included)."""
        return len(self.vocabulary)

    def forward(
        self, image: torch.Tensor, output_size: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image: 1 x 3 x H x W float32, 0-255, in the config's ``INPUT.FORMAT`` channel order.
            output_size: int64 (height, width) of the result, the original image's size.

        Returns:
            ``sem_seg``: K x height x width float32 class scores in the vocabulary's order
            (probabilities; with mask refinement the refined label map's class vote shares) and
            ``clusters``: height x width int64 cluster ids ("dense": class ids in the
            segmenter's order, the background first when the rules are on), as
            ``ViLSeg.inference`` gives them.
        """
        x = (image[0].float() - self.pixel_mean) / self.pixel_std  # 3 x H x W
        encoder = pixel_encoder(self.backbone, self.clustering_head, self.logit_scale)
        # traced: the graph's input; eager: Python ints, as ViLSeg.inference passes them
        size = (output_size[0], output_size[1])
        if not torch.jit.is_tracing():
            size = (int(size[0]), int(size[1]))
        sem_seg, clusters = self.segmenter.segment(x, self.text, encoder, size)
        return to_vocabulary_order(sem_seg, self.background), clusters


@contextlib.contextmanager
def math_attention(module: nn.Module) -> Iterator[None]:
    """Run every :class:`ViLSegSelfAttention` in ``module`` on the batched-matmul kernel for the
    time of the block (a traced graph must not depend on the sequence length it was traced at);
    the kernels are restored after."""
    attention = [m for m in module.modules() if isinstance(m, ViLSegSelfAttention)]
    kernels = [m.kernel for m in attention]
    for m in attention:
        m.kernel = "math"
    try:
        yield
    finally:
        for m, kernel in zip(attention, kernels):
            m.kernel = kernel
