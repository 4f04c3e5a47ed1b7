"""Deployment: ViL-Seg's image branch with a vocabulary baked in, exported to ONNX or
TorchScript (``tools/export_model.py``) and run without PyTorch (``tools/deploy/segment_onnx.py``).

* :mod:`.exportable`: :class:`~.exportable.ExportableViLSeg`, the traceable module (the
  segmenter's own inference, the vocabulary's class embeddings as constants).
* :mod:`.bundle`: tracing it and writing the exported folder (graph, ``classes.json``,
  ``export.json``).
"""

from .bundle import DEFAULT_OPSET, EXPORT_FORMATS, export_model, export_onnx, export_torchscript
from .exportable import EXPORTABLE_MODES, ExportableViLSeg, check_exportable, math_attention

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTABLE_MODES",
    "EXPORT_FORMATS",
    "ExportableViLSeg",
    "check_exportable",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "math_attention",
]
