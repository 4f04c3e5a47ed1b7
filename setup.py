#!/usr/bin/env python
"""vilseg_d2: ViL-Seg (open-world segmentation from image-caption pairs) for Detectron2."""

from setuptools import find_packages, setup

setup(
    name="vilseg_d2",
    version="0.1.0",
    description="ViL-Seg: open-world semantic segmentation from image-caption pairs, on Detectron2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(exclude=("tests", "tools", "configs", "datasets")),
    package_data={"vilseg_d2": ["model_configs/*.json"]},
    install_requires=[
        # Each floor is the oldest release with the APIs named beside it;
        # tests/test_environment.py fails if one drops below them. torch/torchvision are pinned by
        # requirements/constraints.txt in this repository's Makefile; users bring their own CUDA
        # build.
        # torch.is_autocast_enabled(device_type) (2.4; meta_arch's feature cache); 2.3 added
        # torch.amp.GradScaler("cpu"), torch.uint16 and torch.nn.attention.sdpa_kernel.
        "torch>=2.4",
        # torchvision: the release built for torch 2.4 (not imported here; Detectron2 uses it).
        "torchvision>=0.19",
        # np.random.default_rng (1.17); <2: Detectron2's SemSegEvaluator breaks on numpy 2.
        "numpy>=1.17,<2",
        # open_clip.constants.HF_SAFE_WEIGHTS_NAME (2.27); the batch-first Transformer (2.26.1)
        # that D2OpenCLIPViT feeds B x N x C tokens (2.24's sequence-first one mixes the images
        # silently).
        "open_clip_torch>=2.27",
        "fvcore",  # no floor: only used through Detectron2
        "pycocotools",  # no floor: only used through Detectron2
        # No floor for OpenCV: long-standing cv2 calls only (resize, LUT, fillPoly, imwrite).
        "opencv-python-headless",
        # shardlists.expand_urls, SimpleShardList(seed=), shuffle(rng=): the oldest release tested.
        "webdataset>=0.2.86",
        "tqdm",
        # Detectron2 is not on PyPI: tools/install_detectron2.py installs it.
    ],
    extras_require={
        # packaging: tests/test_environment.py checks the installed versions against the floors.
        # black, isort, flake8: `make lint` (settings in pyproject.toml and .flake8); black's
        # stable style changes only with its yearly major version, so it is pinned to one.
        "dev": [
            "pytest>=7",
            "pytest-timeout",
            "scipy",
            "packaging",
            "black>=26.1,<27",
            "flake8>=7,<8",
            "isort>=5.13,<10",
            # tests/test_slurm.py runs tools/submit_slurm.py's jobs with submitit's local executor.
            "submitit>=1.5",
            # tests/test_export.py: the exported graph in onnxruntime (as "deploy" below).
            "onnx>=1.14",
            "onnxruntime>=1.16",
            # tests/test_web_app*.py: the web demo (as "app" below), called through gradio_client
            # (installed with gradio) and driven in headless Chromium through Selenium.
            "gradio>=6.31,<7",
            "selenium>=4.10",
        ],
        # tools/submit_slurm.py: training on a SLURM cluster; JobEnvironment, the local and SLURM
        # executors, the checkpoint/requeue protocol (the oldest release tested).
        "slurm": ["submitit>=1.5"],
        # datasets/prepare_pascal_context.py reads PASCAL Context's .mat files.
        "datasets": ["scipy"],
        # tools/export_model.py writes ONNX with torch.onnx (which needs onnx) and checks the graph
        # in onnxruntime; tools/deploy/segment_onnx.py runs it with onnxruntime, numpy and OpenCV
        # alone. Floors: opset 17 and numpy 1.x wheels (onnx 1.14, onnxruntime 1.16); both run
        # with this project's numpy<2.
        "deploy": ["onnx>=1.14", "onnxruntime>=1.16"],
        # tools/web_demo.py: the browser demo (`make app`). Gradio's API changes between major
        # versions (Blocks events, the queue's arguments, gr.Error/gr.Warning): the 6.x releases
        # tested; it pulls no torch.
        "app": ["gradio>=6.31,<7"],
    },
)
