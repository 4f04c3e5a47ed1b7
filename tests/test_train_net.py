"""tools/train_net.py end to end on the tiny config: 2 CPU processes (gloo), --resume,
--eval-only."""

import json
import os
import re
import subprocess
import sys

import pytest

from vilseg_d2.data.synthetic import generate_synthetic_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2data")
    generate_synthetic_world(str(root / "synthetic"), num_train=96, num_val=6, seed=0)
    return root


def run(args, root, out_dir):
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "train_net.py"),
        "--config-file",
        os.path.join(ROOT, "configs", "vilseg_tiny.yaml"),
        *args,
        "OUTPUT_DIR",
        str(out_dir),
        "MODEL.DEVICE",
        "cpu",
        "SOLVER.IMS_PER_BATCH",
        "8",
        "DATALOADER.NUM_WORKERS",
        "0",
        "INPUT.VILSEG.NUM_LOCAL_CROPS",
        "2",
        "SEED",
        "1",
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def test_two_process_training_resume_and_eval(datasets_root, tmp_path):
    out = tmp_path / "out"
    log = run(
        [
            "--num-gpus",
            "2",
            "--dist-url",
            "auto",
            "SOLVER.MAX_ITER",
            "4",
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
        ],
        datasets_root,
        out,
    )
    assert "World size: 2" in log
    assert "No CUDA runtime is found" not in log  # a CPU run is not told about CUDA_HOME
    assert (out / "model_0000001.pth").exists() and (out / "model_final.pth").exists()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"

    log = run(
        [
            "--num-gpus",
            "2",
            "--dist-url",
            "auto",
            "--resume",
            "SOLVER.MAX_ITER",
            "6",
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
        ],
        datasets_root,
        out,
    )
    assert re.search(r"Starting training from iteration 4", log), log[-3000:]

    log = run(["--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth")], datasets_root, out)
    res = json.loads((out / "eval_results.json").read_text())["sem_seg"]
    assert {"mIoU", "pACC", "fwIoU", "mACC"} <= set(res)
    assert 0 <= res["mIoU"] <= 100
