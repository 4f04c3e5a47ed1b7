"""The command line of the web demo (``tools/web_demo.py``): the model of a config, the page, the
server."""

from __future__ import annotations

import argparse
import atexit
import logging
import shutil
import tempfile
from typing import Optional, Sequence, Tuple

from detectron2.utils.logger import setup_logger

from ..engine.image_segmentation import add_model_arguments, demo_config, describe_weights
from ..engine.predictor import ViLSegPredictor
from ..errors import UserError
from .examples import example_images
from .inputs import InputLimits
from .segmenter import WebSegmenter

__all__ = ["get_parser", "load_web_segmenter", "main"]

logger = logging.getLogger("vilseg_web")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="ViL-Seg web demo: segment images with any vocabulary in a browser."
    )
    p.add_argument("--config-file", required=True, metavar="FILE",
                   help="the model's config, e.g. output/demo/train/config.yaml")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: "
                        "every network)")  # fmt: skip
    p.add_argument("--port", type=int, default=None,
                   help="port (default: the first free one from 7860)")  # fmt: skip
    p.add_argument("--share", action="store_true",
                   help="also ask Gradio for a public link (needs Gradio's servers)")  # fmt: skip
    add_model_arguments(p)
    return p


def load_web_segmenter(
    config_file: str,
    opts: Sequence[str] = (),
    *,
    random_weights: bool = False,
    limits: InputLimits = InputLimits(),
) -> WebSegmenter:
    """The model of a config, as ``tools/demo.py`` loads it, ready for requests.

    Raises:
        UserError: no weights, a missing file, no CUDA, an unknown config key.
    """
    cfg = demo_config(config_file, opts, random_weights=random_weights)
    predictor = ViLSegPredictor(cfg)
    describe_weights(cfg, logger)
    return WebSegmenter(predictor, cfg, limits=limits)


def main(argv: Optional[Sequence[str]] = None, *, block: bool = True) -> Tuple[object, str]:
    """Serve the page of ``argv``'s config.

    Args:
        argv: the command line (default: ``sys.argv``).
        block: serve until interrupted; False returns at once (``page.close()`` stops it).

    Returns:
        The launched ``gr.Blocks`` and its local URL.

    Raises:
        UserError: Gradio is not installed, and :func:`load_web_segmenter`'s and
            :func:`~vilseg_d2.app.server.serve`'s errors.
    """
    args = get_parser().parse_args(argv)
    setup_logger(name="vilseg_web")
    setup_logger(name="vilseg_d2")
    try:
        from .page import build_page
        from .server import serve
    except ModuleNotFoundError as e:
        if e.name != "gradio":
            raise
        raise UserError(
            "The web demo needs Gradio: pip install -e '.[app]' in the repository (`make app` "
            "does it)."
        ) from None
    web = load_web_segmenter(args.config_file, args.opts, random_weights=args.random_weights)
    folder = tempfile.mkdtemp(prefix="vilseg_web_examples_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    page = build_page(web, examples=example_images(folder), model_name=args.config_file)
    url = serve(page, host=args.host, port=args.port, share=args.share,
                max_file_size=web.limits.max_bytes, block=block)  # fmt: skip
    return page, url
