"""The paper's training path, rehearsed on CPU: all three objectives from iteration 0 (so DDP runs
with find_unused_parameters=False), fp16 autocast with a GradScaler, gradient clipping, L_cluster's
J summed over the processes. Two gloo processes on one machine, then two "machines" of one
process each (launched as a multi-node user does); each job SIGKILLed after a checkpoint and
resumed gives the losses of an uninterrupted run. And a run started from MODEL.WEIGHTS
without --resume trains from iteration 0."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

from train_runs import TINY_CONFIG, TRAIN_NET, kill_after_checkpoint, metrics, run, synthetic_root

MAX_ITER = 5
CHECKPOINT_PERIOD = 2  # checkpoints after iterations 1 and 3, model_final after 4
LOSSES = ("total_loss", "loss_vision", "loss_cross", "loss_cluster")
PAPER_PATH = (
    "MODEL.VILSEG.AUX_WARMUP_ITERS", "(0, 0)", "MODEL.VILSEG.CLUSTER_JOINT", "global",
    "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "fp16",
    "SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "3.0",
)  # fmt: skip


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory) -> Path:
    return synthetic_root(tmp_path_factory, "d2data_paper_path")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(out_dir: Path, launch: list[str], *opts: str) -> list[str]:
    """tools/train_net.py on the tiny config with the paper's path: batch 4 over the processes."""
    return [
        sys.executable, TRAIN_NET, "--config-file", TINY_CONFIG, *launch,
        "OUTPUT_DIR", str(out_dir), "MODEL.DEVICE", "cpu", "SEED", "3", "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD),
        "SOLVER.LOG_PERIOD", "1", "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.VILSEG.NUM_LOCAL_CROPS", "2", *PAPER_PATH, *opts,
    ]  # fmt: skip


def one_machine(out_dir: Path, *extra: str) -> list[list[str]]:
    return [command(out_dir, ["--num-gpus", "2", "--dist-url", "auto", *extra])]


def two_machines(out_dir: Path, *extra: str) -> list[list[str]]:
    url = f"tcp://127.0.0.1:{_free_port()}"
    return [
        command(
            out_dir,
            [
                "--num-gpus",
                "1",
                "--num-machines",
                "2",
                "--machine-rank",
                str(rank),
                "--dist-url",
                url,
                *extra,
            ],
        )
        for rank in range(2)
    ]


def run_job(cmds: list[list[str]], root: Path) -> str:
    """Run every machine's command of one job at once; fail unless all succeed."""
    if len(cmds) == 1:
        return run(cmds[0], root)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(cmds)) as pool:
        return "\n".join(pool.map(lambda cmd: run(cmd, root), cmds))


@pytest.fixture(scope="module")
def reference(datasets_root, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("paper_reference")
    log = run_job(one_machine(out), datasets_root)
    assert "World size: 2" in log
    return out, metrics(out)


def assert_same_losses(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want) == list(range(MAX_ITER))
    for it in range(MAX_ITER):
        for key in LOSSES:
            assert got[it][key] == pytest.approx(want[it][key], abs=1e-5, rel=0), (it, key)


def test_reference_run_takes_the_paper_path(reference):
    out, rows = reference
    assert all(set(LOSSES) <= set(rows[it]) for it in range(MAX_ITER))  # all three from iteration 0
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    scaler = final["trainer"]["_trainer"]["grad_scaler"]  # fp16's GradScaler, in the checkpoint
    assert (
        0 < scaler["scale"] < 65536.0
    )  # it backed off from its initial scale: real fp16 overflow handling


@pytest.mark.parametrize("job", [one_machine, two_machines], ids=["2 processes", "2 machines"])
def test_sigkilled_job_resumes_with_the_losses_of_an_uninterrupted_run(
    job, datasets_root, tmp_path, reference
):
    _, want = reference
    out = tmp_path / "killed"
    ckpt_iter = kill_after_checkpoint(job(out), datasets_root, out, CHECKPOINT_PERIOD - 1)
    assert max(metrics(out)) > ckpt_iter  # the kill lost work done after the checkpoint
    log = run_job(job(out, "--resume"), datasets_root)
    assert f"Starting training from iteration {ckpt_iter + 1}" in log, log[-3000:]
    assert_same_losses(metrics(out), want)


def test_run_from_weights_without_resume_trains_from_iteration_zero(
    datasets_root, tmp_path, reference
):
    weights, _ = reference
    out = tmp_path / "finetune"
    # the auxiliary objectives join at iteration 1: the first step's loader makes no local crops,
    # and the model must not ask for them (its schedules follow the trainer's iteration, 0 here)
    log = run(command(out, [], "MODEL.WEIGHTS", str(weights / "model_final.pth"),
                      "SOLVER.MAX_ITER", "3", "MODEL.VILSEG.AUX_WARMUP_ITERS", "(1, 2)",
                      "SOLVER.AMP.ENABLED", "False"), datasets_root)  # fmt: skip
    assert "Starting training from iteration 0" in log
    rows = metrics(out)
    assert sorted(rows) == [0, 1, 2]
    assert (
        "loss_vision" not in rows[0]
        and rows[1]["aux_weight_factor"] == 0.5
        and "loss_vision" in rows[2]
    )
