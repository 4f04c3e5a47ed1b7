"""Loading checkpoints safely, with errors that name the file and say what to do."""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..errors import MissingFileError, UserError

__all__ = [
    "CheckpointMismatchError",
    "NoWeightsError",
    "UnreadableCheckpointError",
    "ViLSegCheckpointer",
    "load_eval_weights",
]

logger = logging.getLogger(__name__)

# What torch.load raises for a file cut short or not a checkpoint at all.
_CORRUPT_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


class UnreadableCheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be read: truncated, corrupt, not a checkpoint, or holding
    Python objects that ``weights_only`` refuses."""


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint none of whose tensors fits the model: another architecture's."""


class NoWeightsError(UserError, ValueError):
    """Nothing to load: the model would run at its random initialisation."""


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else "no details"


class ViLSegCheckpointer(DetectionCheckpointer):
    """Detectron2's :class:`DetectionCheckpointer` (same saving, same key matching, and the
    same log of missing, unexpected and wrongly shaped keys), except that:

    * ``.pth`` / ``.pt`` files (everything the trainer writes) are read with
      ``torch.load(weights_only=True)``: tensors and plain containers only, so loading a
      checkpoint cannot run code. Detectron2's ``.pkl`` model-zoo format is a plain pickle
      and stays as Detectron2 reads it.
    * A file that cannot be read (truncated copy, not a checkpoint, objects that
      ``weights_only`` refuses) raises an error naming the file.
    * A checkpoint none of whose tensors fits the model (another architecture) raises
      instead of leaving the model silently at its random initialisation.
    * A ViL-Seg checkpoint loaded into a model whose backbone wraps the image encoder as
      ``backbone.net`` (``D2OpenCLIPViTPyramid``, e.g. the self-training student) initialises
      that encoder; the rest of ViL-Seg (text tower, heads, teacher) is left out, and logged.
    """

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise MissingFileError(
                f"Checkpoint {path} not found (MODEL.WEIGHTS; a relative path is read from "
                f"{os.getcwd()})."
            )
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _torch_load(self, f: str) -> Any:
        loaded = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        if not isinstance(loaded, Mapping):
            raise TypeError(
                f"Checkpoint {f} holds a {type(loaded).__name__}, not a state dict (a dict of "
                f"tensors, or {{'model': state_dict, ...}} as the trainer writes)."
            )
        return loaded

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            return super()._load_file(filename)
        except pickle.UnpicklingError as e:
            # torch's weights_only unpickler says "Unsupported global" for an object it refuses
            # and e.g. "Unsupported operand" for bytes that are no pickle at all.
            match = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
            reason = match.group(1).strip().split(". Please")[0] if match else _first_line(e)
            if "Unsupported global" not in str(e):
                raise self._corrupt(filename, type(e).__name__, reason) from e
            raise UnreadableCheckpointError(
                f"Checkpoint {filename} holds Python objects besides tensors, which "
                f"torch.load(weights_only=True) refuses to unpickle as they could run code "
                f"({reason}). If you trust the file, re-save its weights only: "
                f"torch.save({{'model': state_dict}}, path)."
            ) from e
        except _CORRUPT_ERRORS as e:
            raise self._corrupt(filename, type(e).__name__, _first_line(e)) from e
        except OSError as e:
            raise OSError(f"Cannot read checkpoint {filename}: {e}") from e

    @staticmethod
    def _corrupt(filename: str, error: str, reason: str) -> UnreadableCheckpointError:
        return UnreadableCheckpointError(
            f"Cannot read checkpoint {filename}: it is truncated, corrupt or not a PyTorch "
            f"checkpoint ({error}: {reason}). Copy or download it again, or use another "
            f"checkpoint (a training run keeps the earlier model_*.pth)."
        )

    def _load_model(self, checkpoint: Dict[str, Any]):
        checkpoint["model"] = self._image_encoder_for_pyramid(checkpoint["model"])
        given = list(checkpoint["model"].keys())
        incompatible = super()._load_model(checkpoint)
        # fvcore never reports batch norms' num_batches_tracked as missing.
        expected = [k for k in self.model.state_dict() if not k.endswith("num_batches_tracked")]
        missing = set(incompatible.missing_keys)
        if expected and all(k in missing for k in expected):
            where = getattr(self, "_loading", None) or "the checkpoint"
            raise CheckpointMismatchError(
                f"None of the {len(given)} tensors of {where} fits this "
                f"{type(self.model).__name__} (it has e.g. {given[:3]}; the model expects e.g. "
                f"{expected[:3]}): it is a "
                "checkpoint of another architecture. Give MODEL.WEIGHTS a checkpoint written by "
                "this project's trainer (model_*.pth); pretrained open_clip towers go to "
                "MODEL.OPEN_CLIP.PRETRAINED."
            )
        return incompatible

    def _image_encoder_for_pyramid(self, weights: Dict[str, Any]) -> Dict[str, Any]:
        """``weights`` of a ViL-Seg model as this model's pyramid backbone expects them (its
        ``backbone.*`` as ``backbone.net.*``, nothing else), or unchanged if not that case."""
        mine = self.model.state_dict()
        if not any(k.startswith("backbone.net.") for k in mine) or any(
            k.startswith("backbone.net.") for k in weights
        ):
            return weights
        encoder = {
            "backbone.net." + k[len("backbone.") :]: v
            for k, v in weights.items()
            if k.startswith("backbone.")
        }
        if not encoder or "text_encoder" not in {k.split(".")[0] for k in weights}:
            return weights  # not a ViL-Seg checkpoint: Detectron2's matching and errors
        logger.info(
            f"ViL-Seg checkpoint: its image encoder ({len(encoder)} tensors) initialises "
            f"backbone.net; {len(weights) - len(encoder)} other tensors (text tower, heads, "
            "teacher) are not used."
        )
        return encoder


def load_eval_weights(cfg, model: torch.nn.Module, *, resume: bool = False) -> None:
    """Load what ``tools/train_net.py --eval-only`` evaluates into ``model`` (built from ``cfg``).

    The last checkpoint of ``OUTPUT_DIR`` with ``resume`` (if there is one), else
    ``MODEL.WEIGHTS``. Without either, the model keeps the weights it was built with: the
    pretrained open_clip towers of ``MODEL.OPEN_CLIP.PRETRAINED`` (e.g. the "CLIP + Seg"
    baseline, ``configs/baselines/``), the heads at their random initialisation.

    Args:
        cfg: the config ``model`` was built from.
        model: the model.
        resume: ``--resume``: prefer the last checkpoint of ``OUTPUT_DIR``.

    Raises:
        NoWeightsError (a ValueError): nothing to load and ``MODEL.OPEN_CLIP.PRETRAINED``
            empty: the model would be evaluated at its random initialisation.
    """
    checkpointer = ViLSegCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    if cfg.MODEL.WEIGHTS or (resume and checkpointer.has_checkpoint()):
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
        return
    name, pretrained = cfg.MODEL.OPEN_CLIP.MODEL_NAME, cfg.MODEL.OPEN_CLIP.PRETRAINED
    if not pretrained:
        raise NoWeightsError(
            'Nothing to evaluate: MODEL.WEIGHTS is empty and MODEL.OPEN_CLIP.PRETRAINED is "" '
            "(random init), so the model would be evaluated at its random initialisation. Pass "
            "MODEL.WEIGHTS /path/to/model_final.pth, or MODEL.OPEN_CLIP.PRETRAINED openai (or a "
            "local open_clip checkpoint) to evaluate pretrained CLIP as configs/baselines/ do."
        )
    logger.info(
        f"MODEL.WEIGHTS is empty: evaluating the open_clip towers {name} / {pretrained} as built "
        f"(MODEL.OPEN_CLIP.PRETRAINED), without ViL-Seg training."
    )
    if cfg.MODEL.VILSEG.INFERENCE_MODE == "online":
        logger.warning(
            "INFERENCE_MODE 'online' without MODEL.WEIGHTS: the clustering head is at its random "
            "initialisation, so the regions come from a random linear map of the pretrained "
            "embeddings. Use INFERENCE_MODE 'dense' (the CLIP + Seg baseline) or 'kmeans' for "
            "pretrained towers alone."
        )
