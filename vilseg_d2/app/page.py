"""The web demo's page, a Gradio ``Blocks``: an image, a vocabulary and the inference settings
in; the labelled overlay, the legend, the time, the cluster map and the per-class shares out.
The same event is the named API endpoint ``/segment``.

A user's mistake (no image, a file that is not one, an empty vocabulary, ...) is a message on the
page (``gr.Error``), never a traceback; a note (a downscaled image) is a ``gr.Warning``.
"""

from __future__ import annotations

import html
from typing import Any, Dict, Optional, Sequence, Tuple

import gradio as gr
import numpy as np

from ..errors import UserError
from .examples import EXAMPLE_VOCABULARIES
from .inputs import IMAGE_FORMATS, read_image, read_vocabulary
from .legend import legend_html, summary_markdown
from .segmenter import WebSegmenter

__all__ = ["build_page", "segment_request"]

# What /segment returns, in order (the page's output components alike).
OUTPUTS = ("overlay", "shares", "clusters", "legend", "summary")


def _uploaded_file(image: Any) -> str:
    """The server-side path of the uploaded image: Gradio hands the event the upload's
    ``FileData`` (a dict) after checking that the file was uploaded to it (a path a client
    names is refused before this point)."""
    path = image.get("path") if isinstance(image, dict) else None
    if not path:
        raise UserError(f"No image: upload one ({IMAGE_FORMATS}) or click an example.")
    return path


def segment_request(
    web: WebSegmenter,
    image: Any,
    vocabulary: Optional[str],
    *,
    mode: Optional[str] = None,
    refine: Optional[bool] = None,
    bg_threshold: Optional[float] = None,
    bg_global_similarity: Optional[float] = None,
) -> Tuple[np.ndarray, Dict[str, float], np.ndarray, str, str]:
    """One request of the page or of ``/segment``.

    Args:
        web: the model.
        image: the upload's ``FileData`` dict (``{"path": ...}``), or None.
        vocabulary: the vocabulary text.
        mode, refine, bg_threshold, bg_global_similarity: the settings (None: the config's).

    Returns:
        The values of :data:`OUTPUTS`: overlay (H' x W' x 3 uint8), per-class shares (0-1),
        cluster map, legend HTML, summary Markdown.

    Raises:
        gr.Error: a user's mistake, with its message.
    """
    try:
        path = _uploaded_file(image)
        classes = read_vocabulary(vocabulary, limits=web.limits)
        settings = web.settings(
            mode=mode,
            refine=refine,
            bg_threshold=bg_threshold,
            bg_global_similarity=bg_global_similarity,
        )
        with open(path, "rb") as f:
            data = f.read(web.limits.max_bytes + 1)
        rgb, notes = read_image(data, limits=web.limits, test_size=web.test_size)
        result = web.segment(rgb, classes, settings)
    except UserError as e:
        # The toast renders HTML: a class name in the message stays text.
        raise gr.Error(html.escape(str(e), quote=False), title="Cannot segment",
                       print_exception=False) from None  # fmt: skip
    for note in notes:
        gr.Warning(html.escape(note, quote=False))
    shares = result.segmentation.shares()
    summary = summary_markdown(result, notes)
    return result.overlay, shares, result.cluster_map, legend_html(result), summary


def _introduction(web: WebSegmenter, model_name: str) -> str:
    limits = web.limits
    return (
        f"# ViL-Seg: segment an image with any vocabulary\n"
        f"Model: `{model_name}`. Upload an image, name the classes to find, and press "
        f"**Segment**. Separate classes with `;` and the synonyms of one class with `,` "
        f"(`cat, kitten; dog; sky, clouds`). Up to {limits.max_classes} classes and "
        f"{limits.max_pixels / 1e6:g} megapixels; images over {limits.max_side} pixels a side are "
        "downscaled. One image is segmented at a time: others wait in line, their place shown."
    )


def build_page(
    web: WebSegmenter, *, examples: Sequence[Tuple[str, str]] = (), model_name: str = ""
) -> gr.Blocks:
    """The page (not launched; see :func:`~vilseg_d2.app.server.serve`).

    Args:
        web: the model.
        examples: (image file, vocabulary) pairs that run on a click.
        model_name: what the page calls the model (e.g. its config file).
    """
    defaults = web.defaults
    with gr.Blocks(title="ViL-Seg demo", analytics_enabled=False) as page:
        gr.Markdown(_introduction(web, model_name))
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", image_mode=None,
                                 sources=["upload", "clipboard"],
                                 elem_id="vilseg-image")  # fmt: skip
                vocabulary = gr.Textbox(
                    label="Vocabulary",
                    info="';' between classes, ',' between the synonyms of one class",
                    placeholder="cat, kitten; dog; sky, clouds",
                    lines=2,
                    max_length=web.limits.max_chars,
                    elem_id="vilseg-vocabulary",
                )
                gr.Examples([[v] for v in EXAMPLE_VOCABULARIES], inputs=[vocabulary],
                            label="Example vocabularies")  # fmt: skip
                with gr.Accordion("Inference settings (the config's by default)", open=False):
                    mode = gr.Radio(list(web.modes), value=defaults.mode, label="Inference mode",
                                    info="online: the clustering head; kmeans: K-means per "
                                    "image; dense: each pixel on its own")  # fmt: skip
                    refine = gr.Checkbox(value=defaults.refine, label="Mask refinement (PAMR)")
                    bg_threshold = gr.Slider(0, 1, value=defaults.bg_threshold, step=0.01,
                                             label="Background threshold (BG_THRESHOLD)",
                                             info="pixels whose best class is less likely than "
                                             "this are background; 0: off")  # fmt: skip
                    bg_global = gr.Slider(0, 1, value=defaults.bg_global_similarity, step=0.01,
                                          label="Background similarity (BG_GLOBAL_SIMILARITY)",
                                          info="regions this similar to the whole image are "
                                          "background; 0: off")  # fmt: skip
                run = gr.Button("Segment", variant="primary", elem_id="vilseg-run")
            with gr.Column():
                overlay = gr.Image(label="Classes", format="png", interactive=False,
                                   elem_id="vilseg-overlay")  # fmt: skip
                legend = gr.HTML(elem_id="vilseg-legend-box")
                summary = gr.Markdown(elem_id="vilseg-summary")
                clusters = gr.Image(label="Clusters", format="png", interactive=False,
                                    elem_id="vilseg-clusters")  # fmt: skip
                with gr.Accordion("Per-class pixel shares (JSON)", open=False):
                    shares = gr.JSON(elem_id="vilseg-shares")
        inputs = [image, vocabulary, mode, refine, bg_threshold, bg_global]
        outputs = [overlay, shares, clusters, legend, summary]

        def segment(image, vocabulary, mode, refine, bg_threshold, bg_global_similarity):
            """Segment an image with a vocabulary. Returns the overlay (PNG), the per-class
            pixel shares (0-1), the cluster map (PNG), the legend (HTML) and a summary."""
            return segment_request(web, image, vocabulary, mode=mode, refine=refine,
                                   bg_threshold=bg_threshold,
                                   bg_global_similarity=bg_global_similarity)  # fmt: skip

        # preprocess=False: the image arrives as the upload's file, which read_image checks
        # (Gradio's own decoding would fail on a bad file with an unhelpful message).
        run.click(segment, inputs, outputs, api_name="segment", preprocess=False)
        if examples:
            shown = gr.Examples([list(e) for e in examples], inputs=[image, vocabulary],
                                label="Examples: click one to segment it")  # fmt: skip
            shown.load_input_event.then(segment, inputs, outputs, preprocess=False,
                                        api_visibility="undocumented")  # fmt: skip
    return page
