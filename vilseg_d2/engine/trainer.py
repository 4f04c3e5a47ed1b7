"""``ViLSegTrainer``: Detectron2's DefaultTrainer wired to caption data and ViL-Seg evaluation."""

from __future__ import annotations

import logging
import os
import weakref
from typing import Dict, List, Optional

import torch
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, HookBase, TrainerBase, create_ddp_model, hooks
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger

from ..data.build import build_caption_train_loader
from ..data.caption_mapper import ViLSegCaptionDatasetMapper
from ..data.caption_stream import CaptionTrainStream
from ..data.datasets.register_sem_seg import class_prompts, require_sem_seg_dataset
from ..evaluation import ViLSegSemSegEvaluator
from .checkpoint import ViLSegCheckpointer
from .optimizer import build_vilseg_optimizer
from .train_loop import AutocastTrainer, compile_transformers

__all__ = [
    "ViLSegTrainer",
    "eval_classes",
    "eval_vocabulary",
    "is_vilseg",
    "require_test_datasets",
    "training_views",
]

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def eval_classes(cfg, dataset_name: str) -> List[str]:
    """The dataset classes the model chooses among on ``dataset_name`` under
    ``TEST.VILSEG.VOCABULARY``, as ``stuff_classes`` spells them; output channel k is class k.

    "all" = every class of ``stuff_classes`` (the generalised zero-shot reading); "unseen" = the
    ``unseen_classes`` only (the zero-shot reading of the paper's Table 1; the evaluator
    ignores the pixels of the other classes).

    Raises:
        DatasetNotRegisteredError: ``dataset_name`` is not registered (the message lists close
            names and says how to register one).
        ValueError: an unknown mode, "unseen" on a dataset without unseen classes, or a dataset
            without ``stuff_classes``.
    """
    meta = require_sem_seg_dataset(dataset_name)
    mode = cfg.TEST.VILSEG.VOCABULARY
    if mode == "all":
        return list(meta.stuff_classes)
    if mode == "unseen":
        unseen = list(meta.get("unseen_classes", []) or [])
        if not unseen:
            raise ValueError(
                f"TEST.VILSEG.VOCABULARY='unseen' but {dataset_name} has no unseen_classes "
                f"metadata."
            )
        return unseen
    raise ValueError(f"TEST.VILSEG.VOCABULARY must be 'all' or 'unseen', got {mode!r}.")


def eval_vocabulary(cfg, dataset_name: str) -> List[str]:
    """What the model gets as its ``vocabulary`` on ``dataset_name``: the prompt names
    (metadata ``prompt_names``, e.g. "concrete wall" for COCO-Stuff's "wall-concrete") of
    :func:`eval_classes`, in the same order, so that prediction k is class k of the evaluator."""
    prompts = class_prompts(dataset_name)
    return [prompts[c] for c in eval_classes(cfg, dataset_name)]


def require_test_datasets(cfg) -> None:
    """Check every name of ``DATASETS.TEST`` (:func:`require_sem_seg_dataset`) before a run, so
    that a misspelt or unregistered name stops it at once rather than at its first evaluation."""
    for name in cfg.DATASETS.TEST:
        require_sem_seg_dataset(name)


def is_vilseg(cfg) -> bool:
    """Whether ``cfg`` trains ViL-Seg on captions; else a stock Detectron2 semantic segmentor
    (e.g. the self-training student) on labelled images."""
    return cfg.MODEL.META_ARCHITECTURE == "ViLSeg"


def training_views(cfg, iteration: int) -> Dict[str, bool]:
    """Which auxiliary views the batch of training step ``iteration`` needs: ``local_crops``
    for L_vision, ``transformed_view`` (g(x)) for L_cluster. Neither before
    ``MODEL.VILSEG.AUX_WARMUP_ITERS[0]``, and never for an objective of weight 0 (another model
    than ViL-Seg gets Detectron2's loader, which ignores them)."""
    v = cfg.MODEL.VILSEG
    active = iteration >= int(v.AUX_WARMUP_ITERS[0])
    return {
        "local_crops": active and v.VISION_WEIGHT > 0,
        "transformed_view": active and v.CLUSTER_WEIGHT > 0,
    }


def _warn_if_aux_objectives_never_train(cfg) -> None:
    """Warn when ``SOLVER.MAX_ITER`` ends before ``MODEL.VILSEG.AUX_WARMUP_ITERS[0]``, so that a
    run meant to train L_vision / L_cluster (weight > 0) does not train L_cross alone unawares."""
    v, start = cfg.MODEL.VILSEG, int(cfg.MODEL.VILSEG.AUX_WARMUP_ITERS[0])
    names = [
        n for n, w in (("L_vision", v.VISION_WEIGHT), ("L_cluster", v.CLUSTER_WEIGHT)) if w > 0
    ]
    if names and is_vilseg(cfg) and cfg.SOLVER.MAX_ITER <= start:
        logger.warning(
            f"{' and '.join(names)} will not train: the run ends at SOLVER.MAX_ITER = "
            f"{cfg.SOLVER.MAX_ITER}, before the auxiliary objectives join at iteration {start} "
            f"(MODEL.VILSEG.AUX_WARMUP_ITERS[0]); only L_cross trains. To train them, set "
            f"SOLVER.MAX_ITER above {start} or start them earlier, e.g. "
            f"MODEL.VILSEG.AUX_WARMUP_ITERS '(0, 0)' (all objectives from iteration 0)."
        )


def _continue_at(loader, iteration: int) -> None:
    """Tell a caption loader's stream to start at ``iteration`` (other loaders are left alone)."""
    stream = getattr(loader, "dataset", None)
    if isinstance(stream, CaptionTrainStream):
        stream.set_start_iteration(iteration)


class _AuxViewsHook(HookBase):
    """Switches to a loader with the auxiliary views when the auxiliary objectives join
    (``MODEL.VILSEG.AUX_WARMUP_ITERS[0]``): until then the mapper skips them, and the loader
    keeps up with the step (tiny config: 6 local crops and g(x) cost a worker about as much as
    the whole L_cross step)."""

    def before_step(self):
        self.trainer.use_training_views(self.trainer.iter)


class _MomentumTeacherHook(HookBase):
    """After every step, moves L_vision's momentum teacher (``MODEL.VILSEG.TEACHER "ema"``)
    towards the network, as DINO updates its teacher in its training loop."""

    def after_step(self):
        model = self.trainer.model
        model = getattr(model, "module", model)  # DDP
        model.teacher.update(model.backbone, model.projection_head, self.trainer.iter)


class _TestMapper:
    """Detectron2's test-time DatasetMapper, plus the vocabulary the model must use."""

    def __init__(self, cfg, vocabulary: List[str]):
        self.mapper = DatasetMapper(cfg, is_train=False)
        self.vocabulary = vocabulary

    def __call__(self, dataset_dict: Dict) -> Dict:
        out = self.mapper(dataset_dict)
        out["vocabulary"] = self.vocabulary
        return out


class ViLSegTrainer(DefaultTrainer):
    """DefaultTrainer with: the caption loader, AdamW groups, autocast on CPU or CUDA
    (``SOLVER.AMP.ENABLED`` + ``SOLVER.AMP.DTYPE``), NaN checks naming the loss,
    :class:`ViLSegSemSegEvaluator` with the classes of ``TEST.VILSEG.VOCABULARY`` (the model gets
    their prompt names, :func:`eval_vocabulary`), and
    metrics written every ``SOLVER.LOG_PERIOD`` iterations, checkpoints read by
    :class:`ViLSegCheckpointer` (``weights_only``, errors naming the file)."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, with two changes: the autocast step (AMPTrainer is CUDA-only)
        # and DDP without device_ids on CPU (multi-process gloo training without GPUs).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        dtype = _AMP_DTYPES.get(cfg.SOLVER.AMP.DTYPE) if cfg.SOLVER.AMP.ENABLED else None
        if cfg.SOLVER.AMP.ENABLED and dtype is None:
            raise ValueError(
                f"SOLVER.AMP.DTYPE must be one of {sorted(_AMP_DTYPES)}, got "
                f"{cfg.SOLVER.AMP.DTYPE!r}."
            )

        _warn_if_aux_objectives_never_train(cfg)
        require_test_datasets(cfg)
        model = self.build_model(cfg)
        if cfg.SOLVER.COMPILE:
            logger.info(f"SOLVER.COMPILE: {compile_transformers(model)} transformers compiled.")
        optimizer = self.build_optimizer(cfg, model)
        self._views = training_views(cfg, 0)
        data_loader = self.build_train_loader(cfg, **self._views)
        on_cpu = next(model.parameters()).device.type == "cpu"
        # While the auxiliary objectives warm up (MODEL.VILSEG.AUX_WARMUP_ITERS) their heads get no
        # gradient, which DDP must be told.
        unused = int(cfg.MODEL.VILSEG.AUX_WARMUP_ITERS[0]) > 0
        model = create_ddp_model(
            model,
            broadcast_buffers=False,
            find_unused_parameters=unused,
            **({"device_ids": None} if on_cpu else {}),
        )
        self._trainer = AutocastTrainer(model, data_loader, optimizer, dtype=dtype)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = ViLSegCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True) -> None:
        """DefaultTrainer's: with ``resume`` and a checkpoint in OUTPUT_DIR, load it all (weights
        and buffers such as the DINO center and step count, optimizer, scheduler, iteration);
        otherwise load ``MODEL.WEIGHTS``. Then the caption stream is told the first iteration,
        so that it continues where the checkpoint left it
        (:meth:`CaptionTrainStream.set_start_iteration`) instead of starting over."""
        super().resume_or_load(resume=resume)
        if self._trainer._data_loader_iter_obj is not None:
            raise RuntimeError(
                "resume_or_load must be called before training reads the data loader."
            )
        self.use_training_views(self.start_iter)
        _continue_at(self._trainer.data_loader, self.start_iter)

    def branch_from(self, path: str) -> None:
        """Start at the checkpoint ``path``'s weights and iteration (with the learning rate of
        the schedule there), but with this trainer's fresh optimizer: a branch of another run
        whose trainable parameters differ (an ablation that freezes a head), whose optimizer
        state a resume could not load. Call it instead of :meth:`resume_or_load`."""
        if self._trainer._data_loader_iter_obj is not None:
            raise RuntimeError("branch_from must be called before training reads the data loader.")
        saved = self.checkpointer.load(path, checkpointables=[])
        if "iteration" not in saved:
            raise ValueError(f"{path} is not a training checkpoint (it has no iteration).")
        self.start_iter = saved["iteration"] + 1
        self.scheduler.last_epoch = saved["iteration"]
        self.scheduler.step()  # the optimizer's learning rates of iteration start_iter
        self.use_training_views(self.start_iter)
        _continue_at(self._trainer.data_loader, self.start_iter)

    def use_training_views(self, iteration: int) -> None:
        """Make the loader deliver the views that step ``iteration`` needs (:func:`training_views`):
        when they change, a new loader replaces the old one and its caption stream continues at
        ``iteration``, as a run resumed there would."""
        views = training_views(self.cfg, iteration)
        if views == self._views:
            return
        logger.info(f"Iteration {iteration}: the training loader now makes {views}.")
        self._views = views

        def build():
            loader = self.build_train_loader(self.cfg, **views)
            _continue_at(loader, iteration)
            return loader

        self._trainer.reset_data_loader(build)

    def build_hooks(self):
        """DefaultTrainer's hooks, with the writers run every ``SOLVER.LOG_PERIOD`` iterations,
        the switch to the auxiliary views when their objectives join, and the momentum
        teacher's update (with ``MODEL.VILSEG.TEACHER "ema"``)."""
        period = int(self.cfg.SOLVER.LOG_PERIOD)
        if period < 1:
            raise ValueError(f"SOLVER.LOG_PERIOD must be >= 1, got {period}.")
        model = getattr(self.model, "module", self.model)
        teacher = [_MomentumTeacherHook()] if getattr(model, "teacher", None) is not None else []
        return (
            [_AuxViewsHook()]
            + teacher
            + [
                (
                    hooks.PeriodicWriter(h._writers, period=period)
                    if isinstance(h, hooks.PeriodicWriter)
                    else h
                )
                for h in super().build_hooks()
            ]
        )

    def build_writers(self):
        """Detectron2's default writers; metrics.json and TensorBoard smooth over the
        ``SOLVER.LOG_PERIOD`` iterations each write covers (1: every iteration's own value)."""
        window = int(self.cfg.SOLVER.LOG_PERIOD)
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), window_size=window),
            TensorboardXWriter(self.cfg.OUTPUT_DIR, window_size=window),
        ]

    @classmethod
    def build_train_loader(cls, cfg, *, local_crops: bool = True, transformed_view: bool = True):
        """The caption loader; ``local_crops`` / ``transformed_view`` False leave those views
        out. Another model (a semantic segmentor) gets Detectron2's loader of labelled images
        (``DatasetMapper``: images with ``sem_seg``)."""
        if not is_vilseg(cfg):
            return build_detection_train_loader(cfg)
        mapper = ViLSegCaptionDatasetMapper(
            cfg, True, local_crops=local_crops, transformed_view=transformed_view
        )
        return build_caption_train_loader(cfg, mapper)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test, after checking all of ``DATASETS.TEST`` (a bad second name would
        otherwise stop the run only once the first dataset is evaluated)."""
        require_test_datasets(cfg)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=_TestMapper(cfg, eval_vocabulary(cfg, dataset_name))
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder: Optional[str] = None):
        evaluator_type = require_sem_seg_dataset(dataset_name).get("evaluator_type", "sem_seg")
        if evaluator_type != "sem_seg":
            raise ValueError(
                f"{dataset_name} has evaluator_type {evaluator_type!r}; ViL-Seg evaluates "
                f"'sem_seg' datasets."
            )
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        classes = eval_classes(cfg, dataset_name)
        if not is_vilseg(cfg) and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES != len(classes):
            raise ValueError(
                f"The model predicts MODEL.SEM_SEG_HEAD.NUM_CLASSES = "
                f"{cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES} classes, but {dataset_name} under "
                f"TEST.VILSEG.VOCABULARY {cfg.TEST.VILSEG.VOCABULARY!r} has {len(classes)} "
                f"({classes[:5]}...): its output channel k must be class k."
            )
        return ViLSegSemSegEvaluator(
            dataset_name, distributed=True, output_dir=output_folder, classes=classes
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_vilseg_optimizer(cfg, model)
