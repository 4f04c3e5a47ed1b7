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
        # torch/torchvision are pinned by requirements/constraints.txt in this repository's
        # Makefile; users bring their own CUDA build.
        "torch>=2.1",
        "torchvision",
        "numpy<2",  # Detectron2's own requirement (its SemSegEvaluator breaks on numpy 2)
        "open_clip_torch>=2.24",
        "fvcore",
        "pycocotools",
        "opencv-python-headless",
        "webdataset>=0.2.86",
        "tqdm",
        # Detectron2 is not on PyPI: tools/install_detectron2.py installs it.
    ],
    extras_require={
        "dev": ["pytest>=7", "pytest-timeout", "scipy"],
        # datasets/prepare_pascal_context.py reads PASCAL Context's .mat files.
        "datasets": ["scipy"],
    },
)
