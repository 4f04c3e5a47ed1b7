"""The web demo's model: one predictor, segmenting one request at a time with that request's
vocabulary and inference settings, through the code path of ``tools/demo.py``
(:func:`~vilseg_d2.engine.image_segmentation.segment_image` and its picture)."""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..engine.image_segmentation import ImageSegmentation, segment_image
from ..engine.predictor import ViLSegPredictor
from ..engine.vocabulary_args import needs_background_class
from ..errors import UserError
from ..modeling.vocabulary import BACKGROUND
from .inputs import InputLimits

__all__ = ["InferenceSettings", "WebResult", "WebSegmenter"]

# The inference modes the page offers (the config's own is added when it is another one).
PAGE_MODES = ("online", "kmeans", "dense")
# Mask refinement steps when the config has none and the page turns it on (TCL's, as the demo's).
DEFAULT_REFINE_ITERS = 10


@dataclass(frozen=True)
class InferenceSettings:
    """What a request may change of the config's inference.

    Attributes:
        mode: MODEL.VILSEG.INFERENCE_MODE.
        refine: mask refinement (PAMR) on or off.
        bg_threshold, bg_global_similarity: the background rules (0 turns a rule off).
    """

    mode: str
    refine: bool
    bg_threshold: float
    bg_global_similarity: float

    @classmethod
    def from_config(cls, cfg) -> "InferenceSettings":
        v = cfg.MODEL.VILSEG
        return cls(v.INFERENCE_MODE, v.REFINE_ITERS > 0, v.BG_THRESHOLD, v.BG_GLOBAL_SIMILARITY)

    def describe(self) -> str:
        rules = (
            f"background rules {self.bg_threshold:g} / {self.bg_global_similarity:g}"
            if self.bg_threshold > 0 or self.bg_global_similarity > 0
            else "no background rules"
        )
        return f"{self.mode}, {'refined' if self.refine else 'not refined'}, {rules}"


@dataclass(frozen=True)
class WebResult:
    """One request's answer.

    Attributes:
        segmentation: the class and cluster maps, the vocabulary (with "background" when the
            rules added it) and the model's time.
        overlay: the classes drawn over the image (the middle panel of ``tools/demo.py``'s
            picture), H' x W' x 3 uint8.
        cluster_map: the clusters over the image (its last panel), H' x W' x 3 uint8.
        settings: the settings segmented with.
        notes: what the user should know (a downscaled image, an added class, ...).
        draw_seconds: how long drawing the pictures took.
    """

    segmentation: ImageSegmentation
    overlay: np.ndarray
    cluster_map: np.ndarray
    settings: InferenceSettings
    notes: List[str] = field(default_factory=list)
    draw_seconds: float = 0.0


class WebSegmenter:
    """Segments requests with one :class:`ViLSegPredictor`, one at a time (a lock: the vocabulary
    and the settings are the model's while it runs).

    Args:
        predictor: the model.
        cfg: its config: the default settings, the modes, the test size.
        limits: what a request may ask for.
    """

    def __init__(self, predictor: ViLSegPredictor, cfg, *, limits: InputLimits = InputLimits()):
        self.predictor = predictor
        self.defaults = InferenceSettings.from_config(cfg)
        self.modes: Tuple[str, ...] = tuple(dict.fromkeys(PAGE_MODES + (self.defaults.mode,)))
        self.refine_iters = cfg.MODEL.VILSEG.REFINE_ITERS or DEFAULT_REFINE_ITERS
        self.test_size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.limits = limits
        self._lock = threading.Lock()
        self._last_vocabulary: Optional[List[str]] = None

    def settings(self, **changes) -> InferenceSettings:
        """The config's settings with ``changes`` (None: the config's), checked.

        Raises:
            UserError: an unknown mode, a rule outside [0, 1], a refinement not true or false.
        """
        settings = replace(self.defaults, **{k: v for k, v in changes.items() if v is not None})
        if settings.mode not in self.modes:
            raise UserError(
                f"Unknown inference mode {settings.mode!r}: choose one of {', '.join(self.modes)}."
            )
        if not isinstance(settings.refine, bool):
            raise UserError(f"refine must be true or false, got {settings.refine!r}.")
        for name in ("bg_threshold", "bg_global_similarity"):
            value = getattr(settings, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise UserError(f"{name} must be a number from 0 to 1 (0: off), got {value!r}.")
        return settings

    def segment(
        self,
        rgb: np.ndarray,
        classes: Sequence[str],
        settings: Optional[InferenceSettings] = None,
    ) -> WebResult:
        """Segment an image.

        Args:
            rgb: H x W x 3 uint8 RGB image.
            classes: the vocabulary's class names (see
                :func:`~vilseg_d2.app.inputs.read_vocabulary`).
            settings: the request's settings (default: the config's).

        Returns:
            The maps, the pictures and the notes; "background" is added first to the
            vocabulary when the rules are on and it names none, as ``tools/demo.py`` adds it.
        """
        settings = settings or self.defaults
        vocabulary, notes = list(classes), []
        rules = {"bg_threshold": settings.bg_threshold}
        rules["bg_global_similarity"] = settings.bg_global_similarity
        if needs_background_class(vocabulary, **rules):
            vocabulary = [BACKGROUND] + vocabulary
            notes.append(
                f"The background rules are on: the class {BACKGROUND!r} was added for the pixels "
                "they assign (set both sliders to 0 to match every pixel to your classes)."
            )
        model = self.predictor.model
        refine_iters = self.refine_iters if settings.refine else 0
        # The whole request under the lock: the model's vocabulary and settings, and the drawing
        # (the warnings filter is global).
        with (
            self._lock,
            model.settings(inference_mode=settings.mode, refine_iters=refine_iters, **rules),
        ):
            if vocabulary != self._last_vocabulary:  # one vocabulary's text embeddings kept
                model.text_encoder.clear_cache()
                self._last_vocabulary = vocabulary
            segmentation = segment_image(self.predictor, rgb, vocabulary)
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                picture = segmentation.picture(rgb)
            draw_seconds = time.perf_counter() - start
        _, overlay, cluster_map = np.split(picture, 3, axis=1)
        if any("Glyph" in str(w.message) and "missing" in str(w.message) for w in caught):
            notes.append(
                "Some characters of the class names are not in the drawing font: they show as "
                "boxes on the overlay (the legend has the names as typed)."
            )
        return WebResult(segmentation, overlay, cluster_map, settings, notes, draw_seconds)
