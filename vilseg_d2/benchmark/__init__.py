"""The CPU benchmark behind ``tools/benchmark.py``: inference, training and loader throughput.

* :mod:`.plan`: what is measured for one config, and how often (:class:`~.plan.Profile`), and
  the benchmark's config (CPU, no mask refinement).
* :mod:`.harness`: timing (warm-up, repetitions, medians), precision and model settings,
  resident memory (RSS, its peak and resetting it), and a fresh subprocess for a list of jobs.
* :mod:`.inference`: the in-process sections ``inference``, ``vocabulary`` and ``sizes``.
* :mod:`.worker`: the per-config subprocess (``python -m vilseg_d2.benchmark.worker``): peak
  memory of inference, ViL-Seg's and open_clip CLIP's training steps, and their comparison.
* :mod:`.loader`: the caption mapper's and the training loader's samples/s.
* :mod:`.export`: the ONNX export in onnxruntime against PyTorch eager, and the mIoU through both.
* :mod:`.report`: the machine, the issue's targets and the readable tables.

Counting (FLOPs, activation memory) stays in :mod:`vilseg_d2.analysis`, which this package uses.
Not imported by ``vilseg_d2``; this file imports none of its modules, so that ``python -m
vilseg_d2.benchmark.worker`` runs the worker module once.
"""
