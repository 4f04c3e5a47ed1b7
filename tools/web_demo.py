#!/usr/bin/env python
"""Segment images with any vocabulary in a browser: the web demo.

    tools/web_demo.py --config-file output/demo/train/config.yaml [--port 7860] \\
        [--host 127.0.0.1] [--share] [--opts KEY VALUE ...]

(`make app` serves the demo model of `make demo`.) It prints the URL to open. The page takes an
image and a vocabulary (';' between classes, ',' between synonyms), lets you choose the inference
mode, mask refinement and the background rules, and shows the labelled overlay, the legend with
each class's share of the pixels, the time taken and the cluster map. The same is the API
endpoint ``/segment`` (e.g. through ``gradio_client``). Requests are computed one at a time.
Needs Gradio: ``pip install -e '.[app]'``.
"""

import os
import sys

# vilseg_d2 first: it fills the registries and quiets third-party import warnings.
# isort: off
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vilseg_d2  # noqa: E402,F401

# isort: on

from vilseg_d2.app.cli import main  # noqa: E402
from vilseg_d2.errors import run_tool  # noqa: E402

if __name__ == "__main__":
    run_tool(main)
