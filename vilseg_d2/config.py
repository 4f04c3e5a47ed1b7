"""Config keys of vilseg_d2. Each ``add_*_config`` only adds keys, as Detectron2's own do."""

import os

from detectron2.config import CfgNode as CN

from .errors import UserError


class ConfigFileNotFoundError(UserError, FileNotFoundError):
    """The config file given does not exist."""


class ConfigKeyError(UserError, KeyError):
    """A config file or override the config cannot take: a key that does not exist (the message
    lists close ones), an override list of odd length."""


class ConfigValueError(UserError, ValueError):
    """A config file or override gives a key a value of the wrong type (a word for a number)."""


class CudaUnavailableError(UserError, RuntimeError):
    """``MODEL.DEVICE`` asks for CUDA on a machine without it."""


def add_vilseg_backbone_config(cfg: CN) -> None:
    """Add the keys of the open_clip ViT backbones (``D2OpenCLIPViT``, ``D2OpenCLIPViTPyramid``).

    Other Detectron2 projects call only this one to use the backbone.
    """
    cfg.MODEL.OPEN_CLIP = CN()
    # Any open_clip model name (``open_clip.list_models()``) or one shipped in
    # vilseg_d2/model_configs (e.g. "ViLSeg-Tiny").
    cfg.MODEL.OPEN_CLIP.MODEL_NAME = "ViT-B-16"
    # "" = random init (the paper trains from scratch); an open_clip pretrained tag
    # (e.g. "openai", "laion2b_s34b_b88k"); or a local checkpoint path.
    cfg.MODEL.OPEN_CLIP.PRETRAINED = ""
    # Where open_clip caches downloaded weights ("" = its default).
    cfg.MODEL.OPEN_CLIP.CACHE_DIR = ""
    # The towers' self-attention kernel: "auto" = batched matmuls on the CPU for sequences of up
    # to 1,024 tokens (several times faster there than PyTorch's fused CPU kernel), PyTorch's
    # scaled_dot_product_attention otherwise (flash / memory-efficient attention on CUDA);
    # "math" or "sdpa" = that one everywhere; "native" = open_clip's nn.MultiheadAttention as is.
    # The same weights and checkpoints with any of them.
    cfg.MODEL.OPEN_CLIP.ATTENTION = "auto"

    cfg.MODEL.CLIP_VIT = CN()
    # "emb": per-token embeddings in the joint space (proj(ln_post(token))), D channels.
    # "res": the raw token features of the last block, the tower's width channels.
    cfg.MODEL.CLIP_VIT.OUT_FEATURES = ["emb"]
    # Replace the patch projection with stride-2 3x3 convs (same total stride as the patch).
    # Small from-scratch configs learn far faster with it; the paper config keeps the plain ViT.
    cfg.MODEL.CLIP_VIT.CONV_STEM = False
    cfg.MODEL.CLIP_VIT.CONV_STEM_WIDTH = 64
    # The stem's norm, a Detectron2 get_norm name: "LN" (channel LayerNorm), "BN", "SyncBN" (use it
    # instead of "BN" for multi-GPU training), "GN", ... A from-scratch stem trains far faster with
    # BN.
    cfg.MODEL.CLIP_VIT.CONV_STEM_NORM = "LN"
    # Extra stride-1 3x3 convs after each stride-2 conv of the stem (0 = one conv per stage).
    cfg.MODEL.CLIP_VIT.CONV_STEM_DEPTH = 0
    # Run the conv stem in the channels-last memory layout (faster oneDNN convolutions on CPU; the
    # same results). No effect without CONV_STEM.
    cfg.MODEL.CLIP_VIT.CHANNELS_LAST = True
    cfg.MODEL.CLIP_VIT.GRAD_CHECKPOINTING = False
    cfg.MODEL.CLIP_VIT.FREEZE = False

    # The multi-scale variant, on Detectron2's SimpleFeaturePyramid (ViTDet).
    cfg.MODEL.CLIP_VIT_PYRAMID = CN()
    cfg.MODEL.CLIP_VIT_PYRAMID.IN_FEATURE = "res"
    cfg.MODEL.CLIP_VIT_PYRAMID.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]
    cfg.MODEL.CLIP_VIT_PYRAMID.OUT_CHANNELS = 256
    cfg.MODEL.CLIP_VIT_PYRAMID.NORM = "LN"
    # Adds p6 by max-pooling the coarsest level (Detectron2's LastLevelMaxPool).
    cfg.MODEL.CLIP_VIT_PYRAMID.TOP_BLOCK = True


def add_vilseg_config(cfg: CN) -> None:
    """Add every key ViL-Seg uses (the backbone's included)."""
    add_vilseg_backbone_config(cfg)

    cfg.MODEL.VILSEG = CN()
    cfg.MODEL.VILSEG.NUM_CLUSTERS = 25
    # Output dim of the projection head Phi_a of the vision (multi-crop) contrast.
    cfg.MODEL.VILSEG.PROJ_DIM = 2048
    cfg.MODEL.VILSEG.PROJ_HIDDEN_DIM = 0  # 0 = the paper's single linear layer
    # Cosine logits (DINO's weight-normalised last layer); False = a plain linear layer.
    cfg.MODEL.VILSEG.PROJ_NORMALIZE = True
    # Global image embedding e_v: "mean" of the per-pixel embeddings (paper) or "cls" token.
    cfg.MODEL.VILSEG.GLOBAL_POOL = "mean"
    # Loss weights; 0 ablates the objective and skips its compute.
    cfg.MODEL.VILSEG.VISION_WEIGHT = 1.0
    cfg.MODEL.VILSEG.CROSS_WEIGHT = 1.0
    cfg.MODEL.VILSEG.CLUSTER_WEIGHT = 1.0
    # Cross-modal contrast: logit scale = exp(param), init 1/0.07, clamped at MAX_LOGIT_SCALE.
    cfg.MODEL.VILSEG.INIT_LOGIT_SCALE = 1 / 0.07
    cfg.MODEL.VILSEG.MAX_LOGIT_SCALE = 100.0
    # Vision contrast (DINO recipe around the self-distillation loss).
    cfg.MODEL.VILSEG.STUDENT_TEMP = 0.1
    cfg.MODEL.VILSEG.TEACHER_TEMP = 0.07
    cfg.MODEL.VILSEG.WARMUP_TEACHER_TEMP = 0.04
    cfg.MODEL.VILSEG.WARMUP_TEACHER_TEMP_ITERS = 4000
    cfg.MODEL.VILSEG.CENTER_MOMENTUM = 0.9
    # L_vision's teacher of the global view: "self" = the network itself, without gradient (the
    # paper's eq. 2); "ema" = DINO's momentum teacher, an EMA of the image encoder and Phi_a whose
    # momentum rises from TEACHER_MOMENTUM to 1 (cosine) over the iterations L_vision trains.
    cfg.MODEL.VILSEG.TEACHER = "self"
    cfg.MODEL.VILSEG.TEACHER_MOMENTUM = 0.996
    # (start, end): L_vision and L_cluster are left out before iteration `start`, then their
    # weights grow linearly to full at `end`. (0, 0) = all three objectives from the start. A
    # from-scratch model may need it: in configs/vilseg_tiny.yaml the auxiliary objectives at full
    # weight from iteration 0 keep L_cross at chance.
    cfg.MODEL.VILSEG.AUX_WARMUP_ITERS = (0, 0)
    # Clustering: True stops L_cluster's gradient at the encoder (head-only training).
    cfg.MODEL.VILSEG.DETACH_CLUSTER_ENCODER = False
    # L_cluster's joint distribution J sums over: "global" = every pixel of the minibatch on every
    # process (paper eq. 7; the same on 1, 8 or 48 GPUs); "batch" = this process's pixels only;
    # "image" = one J per image, the loss averaged over the images.
    cfg.MODEL.VILSEG.CLUSTER_JOINT = "global"

    # Inference.
    # "online" (the clustering head) | "kmeans" (per image) | "kmeans_dataset" (centroids fit once
    # on caption-training images) | "dense" (per-pixel matching)
    cfg.MODEL.VILSEG.INFERENCE_MODE = "online"
    cfg.MODEL.VILSEG.KMEANS_ITERS = 20
    cfg.MODEL.VILSEG.KMEANS_SEED = 0
    # "kmeans_dataset": the file of C centroids written by tools/fit_centroids.py, and how that
    # tool fits them: on the pixel embeddings of this many caption-training images (never the
    # evaluation images), drawn with this seed.
    cfg.MODEL.VILSEG.DATASET_CENTROIDS = ""
    cfg.MODEL.VILSEG.CENTROID_IMAGES = 1000
    cfg.MODEL.VILSEG.CENTROID_SEED = 0
    # Background rules: the vocabulary's class named "background" is not matched by its text; it
    # gets the pixels whose best class probability is below this (0 disables it; a vocabulary
    # without a "background" class is then an error).
    cfg.MODEL.VILSEG.BG_THRESHOLD = 0.0
    # ... and the pixels (dense) or regions (online, K-means) whose embedding has at least this
    # cosine similarity with the image embedding e_v; 0 disables it.
    cfg.MODEL.VILSEG.BG_GLOBAL_SIMILARITY = 0.0
    # Sliding-window inference for large images: window side in pixels (0 = whole image).
    cfg.MODEL.VILSEG.SLIDING_WINDOW_SIZE = 0
    cfg.MODEL.VILSEG.SLIDING_WINDOW_STRIDE = 0
    # Pixel-adaptive mask refinement (PAMR, which TCL applies) of the label map: propagation
    # steps (0 = off, the paper; TCL uses 10) and the dilations of its 3x3 neighbourhoods (TCL's).
    cfg.MODEL.VILSEG.REFINE_ITERS = 0
    cfg.MODEL.VILSEG.REFINE_DILATIONS = (1, 2, 4, 8, 12, 24)

    # Text side: the open_clip text tower of MODEL.OPEN_CLIP.MODEL_NAME.
    cfg.MODEL.VILSEG.TEXT = CN()
    # "single" = "a photo of a {}." as the paper; "imagenet" = CLIP's 80 ImageNet templates.
    cfg.MODEL.VILSEG.TEXT.TEMPLATES = "single"
    cfg.MODEL.VILSEG.TEXT.FREEZE = False
    # Run the text tower on the batch's longest text rather than the whole context where that
    # gives the same embeddings (open_clip's CLIP: causal mask, pooled at the end-of-text token).
    cfg.MODEL.VILSEG.TEXT.TRIM_PADDING = True

    # Training views (DESIGN section 5).
    cfg.INPUT.VILSEG = CN()
    cfg.INPUT.VILSEG.GLOBAL_SIZE = 224
    cfg.INPUT.VILSEG.GLOBAL_SCALE = (0.4, 1.0)
    cfg.INPUT.VILSEG.NUM_LOCAL_CROPS = 6
    cfg.INPUT.VILSEG.LOCAL_SIZE = 96
    cfg.INPUT.VILSEG.LOCAL_SCALE = (0.05, 0.4)
    # g(x): per-channel x * U(1-m, 1+m) + U(-a, a) * 255, then a horizontal flip with probability
    # FLIP_PROB.
    cfg.INPUT.VILSEG.COLOR_MUL = 0.2
    cfg.INPUT.VILSEG.COLOR_ADD = 0.1
    cfg.INPUT.VILSEG.FLIP_PROB = 0.5
    # Colour augmentation of the local crops (the L_vision student views), as DINO's: the same
    # per-channel affine as g(x), then grayscale with LOCAL_GRAYSCALE_PROB. 0 = off (the paper
    # does not say; configs/vilseg_tiny.yaml uses it against the colour shortcut of its captions).
    cfg.INPUT.VILSEG.LOCAL_COLOR_MUL = 0.0
    cfg.INPUT.VILSEG.LOCAL_COLOR_ADD = 0.0
    cfg.INPUT.VILSEG.LOCAL_GRAYSCALE_PROB = 0.0
    # The same for the global view, the one that meets the caption in L_cross (0 = off, the paper):
    # captions' colour words then stop being a shortcut that stands in for the objects' names.
    cfg.INPUT.VILSEG.GLOBAL_COLOR_MUL = 0.0
    cfg.INPUT.VILSEG.GLOBAL_COLOR_ADD = 0.0
    cfg.INPUT.VILSEG.GLOBAL_GRAYSCALE_PROB = 0.0

    # Caption data: records that cannot be read are skipped and counted; the run stops when the
    # skipped fraction passes this limit (after MIN_RECORDS_FOR_SKIP_CHECK records).
    cfg.DATALOADER.MAX_SKIP_FRACTION = 0.1
    cfg.DATALOADER.MIN_RECORDS_FOR_SKIP_CHECK = 100
    # Webdataset shards: samples shuffled in a buffer of this size inside each DataLoader worker
    # (the shard order is reshuffled every epoch).
    cfg.DATALOADER.SHUFFLE_BUFFER_SIZE = 1000
    # Your own caption datasets, registered under their names when the training loader is built
    # (in every process), so that DATASETS.TRAIN can name them without Python. One string per
    # dataset: comma-separated fields of vilseg_d2.data.register_caption_dataset, e.g.
    #   "name=my_pairs,manifest=/data/pairs.jsonl,image_root=/data"
    #   "name=my_shards,shards=/data/shards/{00000..00099}.tar,num_samples=1000000"
    # name=, then exactly one of manifest= (JSONL/TSV), shards= (folder, glob or brace pattern)
    # or coco_json=; optional image_root=, image_key=, caption_key=, num_samples= (shards: the
    # weight when mixing datasets). A relative image path in a manifest is joined to image_root
    # (default: the manifest's own folder), so for paths "images/0001.jpg" and the files in
    # /data/images, image_root is /data, not /data/images; absolute paths are used as they are.
    # Relative manifest, shards and image_root paths are taken from the working directory. Commas
    # inside {} belong to the value; values cannot hold other commas. Before training, the first
    # 20 image files are looked for: none found is an error that names the path and the fix.
    # On the command line: DATASETS.CAPTION_DATASETS '("name=my_pairs,manifest=/data/p.jsonl",)'.
    cfg.DATASETS.CAPTION_DATASETS = ()
    # Folders written by tools/pseudo_label.py, registered (under the name each holds) in every
    # process: a self-training student trains on them (configs/self_training/).
    cfg.DATASETS.PSEUDO_LABEL_ROOTS = ()

    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning rate of the clustering head Phi_c = BASE_LR x this (it follows the same schedule).
    cfg.SOLVER.CLUSTER_HEAD_LR_MULTIPLIER = 1.0
    # The same for the projection head Phi_a of L_vision.
    cfg.SOLVER.PROJECTION_HEAD_LR_MULTIPLIER = 1.0
    cfg.SOLVER.BETAS = (0.9, 0.98)
    # AdamW as one fused kernel per step where PyTorch has it (CPU and CUDA); False = its
    # multi-tensor (foreach) implementation. The same update up to float rounding.
    cfg.SOLVER.FUSED_OPTIMIZER = True
    # torch.compile the image and text transformers for training (compiled once per input shape;
    # the compile time is paid at the first steps). Off: on the tiny config it did not pay off its
    # compile time (docs/benchmarks.md).
    cfg.SOLVER.COMPILE = False
    cfg.SOLVER.EPS = 1e-6
    # "bf16" | "fp16" for the AMP autocast dtype, on CUDA or CPU; enable with SOLVER.AMP.ENABLED.
    # fp16 adds a GradScaler (checkpointed with the trainer).
    cfg.SOLVER.AMP.DTYPE = "bf16"
    # Training metrics (metrics.json, TensorBoard) are written every LOG_PERIOD iterations, each
    # line the median of the LOG_PERIOD iterations since the last one (1 = every iteration's value).
    cfg.SOLVER.LOG_PERIOD = 20

    # Evaluation vocabulary: "all" = the dataset's stuff_classes (whole-vocabulary evaluation);
    # "unseen" = only its unseen_classes are candidates, other pixels ignored (the paper's
    # protocol).
    cfg.TEST.VILSEG = CN()
    cfg.TEST.VILSEG.VOCABULARY = "all"


def get_vilseg_cfg(config_file: str = "", opts=(), *, check_device: bool = True) -> CN:
    """A Detectron2 config with ViL-Seg's keys, ``config_file`` and ``opts`` merged in. Not frozen.

    Args:
        config_file: a yaml config ("" = the defaults only).
        opts: overrides, ``[KEY, VALUE, ...]``.
        check_device: check that this machine has the ``MODEL.DEVICE`` asked for; False where
            the config is run elsewhere (a SLURM job's nodes have the GPUs, its login node not).

    Raises:
        ConfigFileNotFoundError (a FileNotFoundError): ``config_file`` does not exist.
        ConfigKeyError (a KeyError): an override or the file names a key that does not exist,
            or the overrides are not pairs.
        ConfigValueError (a ValueError): a value of the wrong type (yacs' "Type mismatch").
        CudaUnavailableError (a RuntimeError): ``MODEL.DEVICE`` asks for CUDA (Detectron2's
            default, "cuda") and CUDA is not available (with ``check_device``). The run is never
            moved to the CPU silently: pass ``MODEL.DEVICE cpu``.
    """
    from detectron2.config import get_cfg

    if config_file and not os.path.isfile(config_file):
        raise ConfigFileNotFoundError(
            f"--config-file {config_file}: no such file (relative paths are read from "
            f"{os.getcwd()})."
        )
    cfg = get_cfg()
    add_vilseg_config(cfg)
    try:
        if config_file:
            cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:
        raise _unknown_key_error(cfg, str(e.args[0]) if e.args else str(e)) from e
    except ValueError as e:
        if "Type mismatch" not in str(e):
            raise
        raise ConfigValueError(str(e)) from e
    if check_device:
        _check_device_available(cfg.MODEL.DEVICE)
    return cfg


def _check_device_available(device: str) -> None:
    """Raise if ``device`` (a ``MODEL.DEVICE`` value) asks for CUDA on a machine without it.

    Raises:
        CudaUnavailableError: saying to pass ``MODEL.DEVICE cpu`` to run on the CPU.
    """
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CudaUnavailableError(
            f"CUDA was requested (MODEL.DEVICE={device}) but is not available (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda}): check the GPU driver, "
            f"CUDA_VISIBLE_DEVICES and the torch build, or pass MODEL.DEVICE cpu to run on CPU."
        )


def _all_keys(node: CN, prefix: str = "") -> list:
    keys = []
    for k, v in node.items():
        keys += _all_keys(v, f"{prefix}{k}.") if isinstance(v, CN) else [prefix + k]
    return keys


def _unknown_key_error(cfg: CN, message: str) -> KeyError:
    """Turn yacs' "Non-existent key: X" into an error that also says which keys exist."""
    import difflib
    import re

    match = re.search(r"Non-existent (?:config )?key: ([\w.]+)", message)
    if not match:
        return ConfigKeyError(message)
    key = match.group(1)
    section, _, leaf = key.rpartition(".")
    siblings = [k for k in _all_keys(cfg) if k.rpartition(".")[0] == section]
    close = difflib.get_close_matches(
        leaf, [k.rpartition(".")[2] for k in siblings], n=3, cutoff=0.75
    )
    if close:
        hint = (
            "Did you mean " + " or ".join(f"{section}.{c}" if section else c for c in close) + "?"
        )
    else:
        hint = f"Keys under {section or 'the root'}: {', '.join(siblings[:40])}."
    return ConfigKeyError(f"Unknown config key {key}. {hint}")
