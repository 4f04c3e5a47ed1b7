#!/usr/bin/env python3
"""Install Detectron2 into the current Python environment.

Detectron2 is not published on PyPI. This installer picks, in order:

1. nothing, if ``import detectron2`` already works;
2. ``$DETECTRON2_SOURCE`` (a git URL or a local checkout), built with pip so that the compiled
   ops (deformable conv, rotated boxes, ...) are available — what users with a GPU and network
   access should do, e.g.
   ``DETECTRON2_SOURCE=git+https://github.com/facebookresearch/detectron2.git``;
3. otherwise the PyPI wheel ``sal-detectron2`` (Detectron2's main branch, mid-2024), repacked as a
   pure-Python wheel: its ``_C`` extension is built for CUDA 12 / Python 3.10 and cannot load
   here, and ViL-Seg's semantic-segmentation path needs none of the compiled ops.

Run it with the interpreter of the environment to install into:
``.venv/bin/python tools/install_detectron2.py``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
import tempfile

WHEEL_NAME = "sal-detectron2"
WHEEL_VERSION = "0.7.2"
# The wheel's runtime dependencies (its metadata's list, less the Python < 3.7 backport), installed
# explicitly since the repacked wheel goes in with --no-deps.
RUNTIME_DEPS = [
    "fvcore",
    "iopath",
    "pycocotools>=2.0.2",
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "tabulate",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "cloudpickle",
    "matplotlib",
    "tensorboard",
    "tqdm>4.29.0",
    "packaging",
    "Pillow>=7.1",
    "numpy<2",
    "black",  # LazyConfig.save formats configs with it
]


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def _set_pure_python_tag(wheel_dir: str) -> None:
    """Rewrite the unpacked wheel's WHEEL file so it installs on any CPython 3."""
    (wheel_file,) = glob.glob(os.path.join(wheel_dir, "*.dist-info", "WHEEL"))
    with open(wheel_file, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        if not line.strip() or line.startswith("Tag:"):
            continue
        if line.startswith("Root-Is-Purelib:"):
            line = "Root-Is-Purelib: true"
        out.append(line)
    out.append("Tag: py3-none-any")
    with open(wheel_file, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def install_from_pypi_wheel() -> None:
    """Download ``sal-detectron2``, drop its CUDA extension, repack as py3-none-any, install."""
    _pip("install", "--quiet", "wheel")
    with tempfile.TemporaryDirectory() as tmp:
        _pip(
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.10",
            f"{WHEEL_NAME}=={WHEEL_VERSION}",
            "-d",
            tmp,
        )
        (wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
        unpack_root = os.path.join(tmp, "unpacked")
        subprocess.check_call([sys.executable, "-m", "wheel", "unpack", wheel, "-d", unpack_root])
        (wheel_dir,) = glob.glob(os.path.join(unpack_root, "*"))
        for so in glob.glob(os.path.join(wheel_dir, "detectron2", "_C*.so")):
            os.remove(so)
        _set_pure_python_tag(wheel_dir)
        dist = os.path.join(tmp, "dist")
        os.makedirs(dist)
        subprocess.check_call([sys.executable, "-m", "wheel", "pack", wheel_dir, "-d", dist])
        (repacked,) = glob.glob(os.path.join(dist, "*.whl"))
        _pip("install", "--quiet", *RUNTIME_DEPS)
        _pip("install", "--quiet", "--no-deps", "--force-reinstall", repacked)


def install_from_source(source: str) -> None:
    """Build Detectron2 from a git URL or a local checkout (compiled ops included)."""
    spec = source if os.path.isdir(source) or source.startswith("git+") else f"git+{source}"
    # --no-build-isolation: build against the torch already installed, never a fresh one.
    _pip("install", "--no-build-isolation", spec)


def main() -> int:
    if importlib.util.find_spec("detectron2") is not None:
        import detectron2

        print(f"detectron2 {detectron2.__version__} already installed; nothing to do.")
        return 0
    source = os.environ.get("DETECTRON2_SOURCE", "").strip()
    if source:
        install_from_source(source)
    else:
        install_from_pypi_wheel()
    import detectron2  # noqa: F401  (fails loudly if the install did not work)

    print(f"detectron2 {detectron2.__version__} installed from {source or WHEEL_NAME}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
