"""tools/run_demo.py: the background rules are chosen on a held-out synthetic world; the Table 2
ablations start from the model's end of the L_cross phase and vary only their seed."""

import json
import sys

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from vilseg_d2.data.synthetic import STUFF_CLASSES, generate_synthetic_world
from vilseg_d2.engine import ViLSegCheckpointer
from vilseg_d2.visualization import cluster_panel

from helpers import ROOT, tiny_cfg
from train_runs import metrics as training_metrics
from train_runs import run


def _run_demo():
    """The demo's steps (tools/run_demo.py runs them)."""
    import vilseg_d2.demo

    return vilseg_d2.demo


def test_background_rules_chosen_on_the_held_out_world(tmp_path):
    run_demo = _run_demo()
    pairs = run_demo.held_out_world(str(tmp_path / "synthetic"), 6)
    assert len(pairs) == 6 and (tmp_path / "synthetic_heldout" / "meta.json").is_file()
    assert (
        len(run_demo.held_out_world(str(tmp_path / "synthetic"), 9)) == 9
    )  # a smaller one is made anew
    image, mask = pairs[0]
    assert image.shape == (3, 128, 128) and image.dtype == torch.uint8 and mask.shape == (128, 128)

    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    chosen = run_demo.calibrate_background(model, "dense", pairs, list(STUFF_CLASSES))
    assert len(chosen["grid"]) == len(run_demo.BACKGROUND_GRID)
    assert chosen["heldout_mIoU"] == pytest.approx(max(chosen["grid"].values()), abs=0.01)
    # the model keeps the chosen rules, and scores with them what the calibration said
    assert (model.bg_threshold, model.bg_global_similarity) == (
        chosen["bg_threshold"],
        chosen["bg_global_similarity"],
    )
    assert abs(run_demo.mean_iou(model, pairs, list(STUFF_CLASSES)) - chosen["heldout_mIoU"]) < 1e-6


def test_a_checkpoint_of_another_configuration_is_not_reused(tmp_path):
    run_demo = _run_demo()
    torch.manual_seed(0)
    five = build_model(tiny_cfg(MODEL__VILSEG__NUM_CLUSTERS=5))
    ViLSegCheckpointer(five, str(tmp_path)).save("model_final")
    path = str(tmp_path / "model_final.pth")
    run_demo.check_fits(five, path)
    with pytest.raises(
        RuntimeError, match=r"another configuration: 2 tensors .*clustering_head.*Delete"
    ):
        run_demo.check_fits(build_model(tiny_cfg()), path)


def test_results_table_has_a_row_per_model_mode_and_refinement():
    run_demo = _run_demo()
    cfg = tiny_cfg(MODEL__VILSEG__BG_THRESHOLD=0.9)

    def result(mode, iters, miou, background=None):
        return {
            "mIoU": miou,
            "pACC": 80.0,
            "mACC": 50.0,
            "mode": mode,
            "refine_iters": iters,
            "background": background,
        }

    metrics = {
        "ViL-Seg": {
            "train_seconds": 10.0,
            "online": result(
                "online", 10, 58.94, {"bg_threshold": 0.995, "bg_global_similarity": 0.8}
            ),
            "online, unrefined": result("online", 0, 44.31),
        },
        "wall_seconds": 20.0,
    }
    rows = run_demo.results_table(metrics, cfg.MODEL.VILSEG).splitlines()
    assert len(rows) == 4
    assert rows[2] == "| ViL-Seg | online | PAMR, 10 steps | 58.9 | 80.0 | 50.0 | 0.995 / 0.8 |"
    assert (
        rows[3] == "| ViL-Seg | online | none | 44.3 | 80.0 | 50.0 | 0.9 / 0.0 |"
    )  # the config's rules


def test_cluster_panel_colours_every_cluster():
    rgb = np.full((32, 32, 3), 128, dtype=np.uint8)
    clusters = np.zeros((32, 32), dtype=np.int64)
    clusters[8:20, 8:20] = 3  # a square without holes: drawn as a polygon
    clusters[26:, 26:] = 7
    panel = cluster_panel(rgb, clusters)
    assert panel.shape == rgb.shape and panel.dtype == np.uint8
    inside = {c: panel[clusters == c].reshape(-1, 3).mean(0) for c in (0, 3, 7)}
    for c, colour in inside.items():  # every cluster is painted over the grey image ...
        assert np.abs(colour - 128).max() > 20, c
    # ... each in its own colour
    assert min(np.abs(inside[a] - inside[b]).max() for a, b in ((0, 3), (0, 7), (3, 7))) > 20


def test_ablation_runs_are_the_papers_table_2_columns():
    run_demo = _run_demo()
    assert list(run_demo.demo_runs(False)) == ["ViL-Seg"]
    runs = run_demo.demo_runs(True)
    folders = [sub for sub, _, _ in runs.values()]
    assert len(set(folders)) == 3  # each model trains (and resumes) in its own folder
    assert runs["ViL-Seg"][1:] == ((), ("online",))
    _, extra, modes = runs["ViL-Seg w/o clustering head"]
    assert modes == ("kmeans_dataset", "kmeans")
    model = build_model(
        tiny_cfg(**{k.replace(".", "__"): v for k, v in zip(extra[::2], extra[1::2])})
    )
    assert model.criterion.weight_dict["loss_cluster"] == 0 and not any(
        p.requires_grad for p in model.clustering_head.parameters()
    )
    _, extra, modes = runs["ViL-Seg w/o L_vision"]
    assert modes == ("online",) and extra == ("MODEL.VILSEG.VISION_WEIGHT", 0.0)


def test_eval_config_carries_the_rows_inference(tmp_path):
    from vilseg_d2.config import get_vilseg_cfg

    run_demo = _run_demo()
    cfg = tiny_cfg(OUTPUT_DIR=str(tmp_path))
    model = build_model(cfg)
    model.inference_mode, model.refine_iters = "kmeans", 0
    model.bg_threshold, model.bg_global_similarity = 0.95, 0.7
    path = run_demo.write_eval_config(cfg, model, "eval_kmeans_unrefined")
    assert path == str(tmp_path / "eval_kmeans_unrefined.yaml")
    written = get_vilseg_cfg(path)  # loads as any config: no override needed to evaluate the row
    v = written.MODEL.VILSEG
    assert (v.INFERENCE_MODE, v.REFINE_ITERS, v.BG_THRESHOLD, v.BG_GLOBAL_SIMILARITY) == (
        "kmeans",
        0,
        0.95,
        0.7,
    )
    assert (
        written.MODEL.WEIGHTS == str(tmp_path / "model_final.pth") and written.MODEL.DEVICE == "cpu"
    )
    assert written.OUTPUT_DIR == str(tmp_path / "eval" / "eval_kmeans_unrefined")


def test_whole_runs_and_ablation_branch_from_each_seeds_own_l_cross_phase(tmp_path):
    """--ablation --seeds 2: a whole run per seed (the demo's own is SEED 1), and every Table 2
    column of a seed starts after that seed's L_cross phase, from its checkpoint; the seeds change
    the batches; the tables report mean ± sample std and the paired differences; a second run
    reuses every recorded run."""
    generate_synthetic_world(
        str(tmp_path / "synthetic"), num_train=24, num_val=2, seed=0, num_workers=0
    )
    out = tmp_path / "demo"
    schedule = ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(2,)",
                "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "2",
                "MODEL.VILSEG.AUX_WARMUP_ITERS", "(2, 2)", "MODEL.VILSEG.REFINE_ITERS", "0",
                "MODEL.VILSEG.CENTROID_IMAGES", "6",
                "DATALOADER.NUM_WORKERS", "0", "SOLVER.LOG_PERIOD", "1"]  # fmt: skip
    demo = [sys.executable, f"{ROOT}/tools/run_demo.py", "--output", str(out), "--precision",
            "fp32", "--calibration-images", "0", "--pictures", "1"]  # fmt: skip
    run([*demo, "--ablation", "--seeds", "2", *schedule], tmp_path)

    main = training_metrics(out / "train")
    second = training_metrics(out / "seeds" / "seed2" / "train")
    assert sorted(main) == sorted(second) == [0, 1, 2, 3]  # two whole runs
    assert main[0]["total_loss"] != second[0]["total_loss"]  # from other initial weights
    metrics = json.loads((out / "metrics.json").read_text())
    spread = metrics["whole_runs"]
    assert spread["seeds"] == [1, 2]
    online = spread["ViL-Seg"]["online"]
    assert online["seeds"][0]["mIoU"] == metrics["ViL-Seg"]["online"]["mIoU"]
    assert online["mIoU_std"] == pytest.approx(np.std([s["mIoU"] for s in online["seeds"]], ddof=1))
    assert set(spread["ViL-Seg"]) == {"online", "kmeans", "dense"}

    ablation = metrics["ablation"]
    assert ablation["seeds"] == [1, 2]
    assert ablation["starts"] == [
        str(out / "train" / "model_0000001.pth"),
        str(out / "seeds" / "seed2" / "train" / "model_0000001.pth"),
    ]
    for sub in ("vilseg", "no_vision", "no_cluster"):
        seed1, seed2 = (training_metrics(out / "ablation" / f"{sub}_seed{s}") for s in (1, 2))
        assert sorted(seed1) == sorted(seed2) == [2, 3]  # resumed after the seed's own phase
        assert seed1[2]["loss_cross"] != seed2[2]["loss_cross"]
        assert seed1[3]["lr"] == pytest.approx(main[3]["lr"])  # the schedule goes on
    log = (out / "demo_log.txt").read_text()
    for start in ablation["starts"]:
        assert log.count(f"Loading from {start}") == 3  # the seed's 3 columns
    no_head = ablation["ViL-Seg w/o clustering head"]
    assert set(no_head) == {"kmeans_dataset", "kmeans"}
    for seed in (1, 2):  # the dataset-level rows' centroids, fit beside each model
        folder = out / "ablation" / f"no_cluster_seed{seed}"
        assert (folder / "centroids.pth").is_file()
        written = (folder / "eval_kmeans_dataset.yaml").read_text()
        assert f"DATASET_CENTROIDS: {folder / 'centroids.pth'}" in written
    for column, row in (
        ("ViL-Seg", "online"),
        ("ViL-Seg w/o L_vision", "online"),
        ("ViL-Seg w/o clustering head", "kmeans"),
        ("ViL-Seg w/o clustering head", "kmeans_dataset"),
    ):
        r = ablation[column][row]
        values = [s["mIoU"] for s in r["seeds"]]
        assert r["mIoU_mean"] == pytest.approx(np.mean(values))
        assert r["mIoU_std"] == pytest.approx(np.std(values, ddof=1))
    differences = {(d["column"], d["row"]): d for d in metrics["differences"]}
    d = differences[("ViL-Seg w/o clustering head", "kmeans_dataset")]
    base = [s["mIoU"] for s in ablation["ViL-Seg"]["online"]["seeds"]]
    rows = [s["mIoU"] for s in no_head["kmeans_dataset"]["seeds"]]
    assert d["differences"] == pytest.approx([a - b for a, b in zip(rows, base)])
    table = (out / "results.md").read_text()
    assert "Whole runs (mean ± sample std over SEED 1, 2)" in table
    assert "Table 2 (mean ± sample std over SEED 1, 2)" in table
    assert "Paired differences per seed" in table

    # Run again: every run is recorded beside its model, so nothing is trained or evaluated anew.
    run([*demo, "--ablation", "--seeds", "2", *schedule], tmp_path)
    again = (out / "demo_log.txt").read_text()[len(log) :]
    assert again.count("Recorded results of") == 7  # the second whole run and 6 columns
    assert not any(f"Loading from {start}" in again for start in ablation["starts"])
    assert json.loads((out / "metrics.json").read_text())["ablation"] == ablation


def test_precision_follows_what_the_cpu_computes(monkeypatch, caplog):
    """bf16 only where the CPU computes it natively (emulated, a step took 12x fp32's); the
    trainer warns when asked for an emulated autocast dtype."""
    from vilseg_d2.demo import training
    from vilseg_d2.engine import AutocastTrainer, train_loop

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(training, "cpu_has_native", lambda dtype, native=native: native)
        assert training.training_precision("auto") == expected
    assert training.training_precision("bf16") == "bf16"
    assert train_loop.cpu_has_native(torch.float32)

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for native in (True, False):
        monkeypatch.setattr(train_loop, "cpu_has_native", lambda dtype, native=native: native)
        caplog.clear()
        with caplog.at_level("WARNING", logger=train_loop.__name__):
            AutocastTrainer(model, [], optimizer, dtype=torch.bfloat16)
        assert ("emulated" in caplog.text) == (not native)


def test_self_training_adds_the_students_row(tmp_path):
    """--self-training: the demo's model pseudo-labels caption images, the student trains on them
    from the model's encoder, and its row joins the table (its config evaluates it again)."""
    generate_synthetic_world(
        str(tmp_path / "synthetic"), num_train=12, num_val=2, seed=0, num_workers=0
    )
    out = tmp_path / "demo"
    run([sys.executable, f"{ROOT}/tools/run_demo.py", "--output", str(out), "--precision", "fp32",
         "--calibration-images", "0", "--pictures", "0", "--self-training", "--st-images", "6",
         "--st-opts", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.LOG_PERIOD",
         "1", "DATALOADER.NUM_WORKERS", "0",
         "--", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0",
         "MODEL.VILSEG.REFINE_ITERS", "2", "DATALOADER.NUM_WORKERS", "0"], tmp_path)  # fmt: skip
    rows = json.loads((out / "metrics.json").read_text())["ViL-Seg + ST"]
    student, refined = rows["student"], rows["student, refined"]
    assert student["pseudo_labels"]["images"] == 6 and 0 <= student["mIoU"] <= 100
    assert sorted(training_metrics(out / "self_training")) == [0, 1]
    table = (out / "results.md").read_text()
    assert "| ViL-Seg + ST | student: SemSegFPNHead | none |" in table
    assert "| ViL-Seg + ST | student: SemSegFPNHead | PAMR, 2 steps |" in table
    from vilseg_d2.config import get_vilseg_cfg

    for row, architecture, iters in ((student, "SemanticSegmentor", 0),
                                     (refined, "RefinedSemanticSegmentor", 2)):  # fmt: skip
        written = get_vilseg_cfg(row["config"])
        assert written.MODEL.WEIGHTS == str(out / "self_training" / "model_final.pth")
        assert written.MODEL.META_ARCHITECTURE == architecture
        assert written.MODEL.VILSEG.REFINE_ITERS == iters == row["refine_iters"]
