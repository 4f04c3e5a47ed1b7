"""The web demo (``tools/web_demo.py``, ``make app``): a Gradio page and its ``/segment`` API.

* :mod:`.inputs`: the uploaded image and the vocabulary text, checked (limits, messages).
* :mod:`.segmenter`: the model, one request at a time, through ``tools/demo.py``'s code path.
* :mod:`.legend`: the legend and the summary of a result.
* :mod:`.examples`: the page's examples (synthetic validation images, vocabularies).
* :mod:`.page`: the Gradio page and its event (Gradio needed).
* :mod:`.server`: the queue, the launch and the printed URL (Gradio needed).
* :mod:`.cli`: the command line.

Only :mod:`.page`, :mod:`.server` and :mod:`.cli`'s ``main`` import Gradio (the ``app`` extra).
"""

from .inputs import InputLimits, read_image, read_vocabulary
from .segmenter import InferenceSettings, WebResult, WebSegmenter

__all__ = [
    "InferenceSettings",
    "InputLimits",
    "WebResult",
    "WebSegmenter",
    "read_image",
    "read_vocabulary",
]
