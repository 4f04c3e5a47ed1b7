"""What ``make demo`` should give: the whole-run spread of its recipe, and where a run falls in it.

The demo is one draw of a recipe whose whole runs (all iterations, another ``SEED`` each) spread
by several mIoU points, and another CPU's arithmetic gives another draw. :data:`WHOLE_RUNS` holds
the measured runs of the recipe of ``configs/vilseg_tiny.yaml`` (``tools/run_demo.py --spread
--seeds N``, whose ``metrics.json`` has them under "whole_runs"); :func:`placement` says where a
new run's rows fall against them. Re-measure them whenever the recipe changes.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np

__all__ = ["WHOLE_RUNS", "placement"]

# Each row's mIoU in the whole runs of SEED 1, 2, 3 (`tools/run_demo.py --spread --seeds 3`; SEED 1
# is the README's table), with where they were measured.
WHOLE_RUNS: Dict = {
    "machine": "a 2-core AMD EPYC with AVX512-BF16",
    "precision": "bf16",
    "rows": {
        "online": [41.55, 53.81, 46.54],
        "online, unrefined": [34.31, 41.64, 38.01],
        "kmeans": [44.85, 55.0, 47.38],
        "kmeans, unrefined": [35.87, 42.42, 37.81],
        "dense": [44.71, 52.65, 45.59],
        "dense, unrefined": [35.67, 41.15, 36.63],
    },
}


def placement(rows: Mapping[str, Mapping], reference: Optional[Mapping] = None) -> str:
    """One line per row of ``rows`` (the demo's {row: results with "mIoU"}) that the reference
    measured: the run's mIoU, the reference's mean ± sample std and range, and how many stds from
    the mean it is. Empty when there is no reference."""
    reference = WHOLE_RUNS if reference is None else reference
    lines = []
    for row, values in reference.get("rows", {}).items():
        if row not in rows or len(values) < 2:
            continue
        lines.append(_line(row, float(rows[row]["mIoU"]), values))
    if not lines:
        return ""
    head = (
        f"Against {len(next(iter(reference['rows'].values())))} whole runs of this recipe "
        f"({reference['machine']}, {reference['precision']}; another CPU gives another draw):"
    )
    return "\n".join([head, *lines])


def _line(row: str, miou: float, values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=float)
    mean, std = float(v.mean()), float(v.std(ddof=1))
    z = (miou - mean) / std if std > 0 else 0.0
    inside = "inside" if abs(z) <= 2 else "outside"
    return (
        f"  {row}: {miou:.1f} mIoU; whole runs {mean:.1f} ± {std:.1f} (range {v.min():.1f}-"
        f"{v.max():.1f}): {z:+.1f} std, {inside} mean ± 2 std"
    )
