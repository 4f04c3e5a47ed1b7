"""vilseg_d2.demo.diagnosis: the measurements that explain a draw of the demo recipe."""

import json

import numpy as np
import pytest
import torch

from vilseg_d2.demo.diagnosis import cluster_statistics, grayscale, loss_summary


class _Clusters(torch.nn.Module):
    """Stands in for a model: returns fixed cluster maps, one per call, in order."""

    def __init__(self, maps):
        super().__init__()
        self.maps = list(maps)
        self.inference_mode = "online"
        self.calls = 0

    def forward(self, inputs):
        out = self.maps[self.calls]
        self.calls += 1
        return [{"clusters": torch.as_tensor(out)}]


def test_loss_summary_reads_both_phases(tmp_path):
    lines = []
    for it in range(19, 200, 20):  # L_cross alone below 100: total_loss is L_cross
        record = {"iteration": it, "total_loss": float(it), "aux_weight_factor": 0.0}
        if it >= 100:
            record = {"iteration": it, "total_loss": 9.0, "loss_cross": 1.0, "loss_vision": 2.0,
                      "loss_cluster": -1.0, "aux_weight_factor": 1.0}  # fmt: skip
        lines.append(json.dumps(record))
    (tmp_path / "metrics.json").write_text("\n".join(lines) + "\n")
    out = loss_summary(str(tmp_path), phase_end=100, window=40)
    assert out["loss_cross_end_of_phase"] == pytest.approx((79 + 99) / 2)  # iterations 60-99
    assert out["loss_cross_final"] == 1.0 and out["loss_vision_final"] == 2.0
    assert "loss_vision_end_of_phase" not in out
    assert loss_summary(str(tmp_path / "none"), 100) == {}


def test_cluster_statistics_purity_and_oracle():
    mask = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    # one cluster per class: pure, the oracle is perfect
    exact = _Clusters([mask * 3 + 7])
    stats = cluster_statistics(exact, "online", [(torch.zeros(3, 4, 4), mask)], ["a", "b", "c"])
    assert stats == {"clusters_per_image": 3.0, "purity": 1.0, "objects_per_image": 3.0,
                     "oracle_mIoU": 100.0}  # fmt: skip
    # classes 0 and 1 share a cluster (4 + 4 pixels, majority tie -> class 0): 4 pixels wrong
    merged = _Clusters([np.where(mask == 2, 5, 1)])
    stats = cluster_statistics(merged, "kmeans", [(torch.zeros(3, 4, 4), mask)], ["a", "b", "c"])
    assert merged.inference_mode == "kmeans"
    assert stats["clusters_per_image"] == 2.0 and stats["purity"] == pytest.approx(12 / 16)
    # IoU: class 0 4/8, class 1 0/4, class 2 8/8
    assert stats["oracle_mIoU"] == pytest.approx(100 * (0.5 + 0 + 1) / 3)


def test_grayscale_removes_colour_only():
    image = torch.tensor([[[200, 10]], [[30, 10]], [[90, 10]]], dtype=torch.uint8)  # 3 x 1 x 2
    mask = np.array([[1, 0]])
    ((grey, same_mask),) = grayscale([(image, mask)])
    assert grey.dtype == torch.uint8 and grey.shape == image.shape and same_mask is mask
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert grey[0, 0, 0].item() == round(0.299 * 200 + 0.587 * 30 + 0.114 * 90)
    assert grey[0, 0, 1].item() == 10


def test_placement_against_whole_runs():
    from vilseg_d2.demo.reference import placement

    reference = {"machine": "a CPU", "precision": "bf16", "rows": {"online": [40.0, 50.0, 45.0]}}
    text = placement({"online": {"mIoU": 55.0}, "kmeans": {"mIoU": 1.0}}, reference)
    assert "3 whole runs of this recipe (a CPU, bf16" in text
    assert "online: 55.0 mIoU; whole runs 45.0 ± 5.0 (range 40.0-50.0): +2.0 std, inside" in text
    assert "kmeans" not in text  # no reference for it
    assert "outside" in placement({"online": {"mIoU": 30.0}}, reference)
    assert placement({"online": {"mIoU": 30.0}}, {"rows": {}}) == ""
