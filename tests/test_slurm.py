"""tools/submit_slurm.py (vilseg_d2/engine/slurm.py): a training job of one task per node, its
machine rank and rendezvous from the SLURM environment, requeued with --resume on preemption.

Without a cluster: the sbatch script and the node command lines are checked as printed by
--dry-run and as handed to a stand-in ``sbatch``; mistakes must stop before anything is
submitted; and real jobs run with submitit's local executor (each task plays a node, gloo on
127.0.0.1): a 2-node job trains, and a 2-node job preempted after a checkpoint is requeued by
submitit and computes the losses of the uninterrupted one."""

from __future__ import annotations

import os
import pickle
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
import torch

from vilseg_d2.engine.slurm import (
    DRY_RUN_HOST,
    DRY_RUN_PORT,
    NodeTraining,
    plan_job,
    rendezvous_port,
    submit,
)

from helpers import load_script
from train_runs import ROOT, TINY_CONFIG, environment, metrics, synthetic_root

SUBMIT_SLURM = os.path.join(ROOT, "tools", "submit_slurm.py")
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
PAPER_CONFIG = os.path.join(ROOT, "configs", "vilseg_vitb16.yaml")
MAX_ITER = 5
CHECKPOINT_PERIOD = 2  # checkpoints after iterations 1 and 3, model_final after 4
LOSSES = ("total_loss", "loss_vision", "loss_cross", "loss_cluster")
# The tiny config on CPU, batch 4 over the two "nodes", every iteration logged; all three objectives
# from iteration 0, L_cluster's J summed over the processes, DINO's momentum teacher (its state
# must resume too).
TRAINING = (
    "MODEL.DEVICE", "cpu", "SEED", "3", "DATASETS.TEST", "()",
    "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD),
    "SOLVER.LOG_PERIOD", "1", "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0",
    "INPUT.VILSEG.NUM_LOCAL_CROPS", "2", "MODEL.VILSEG.AUX_WARMUP_ITERS", "(0, 0)",
    "MODEL.VILSEG.CLUSTER_JOINT", "global", "MODEL.VILSEG.TEACHER", "ema",
)  # fmt: skip
JOB_TIMEOUT_S = 400


@pytest.fixture(scope="module")
def submit_slurm():
    return load_script("tools/submit_slurm.py", "submit_slurm")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """Stand-ins for sinfo (partitions debug, the default, 1 h; gpu, 3 days; long, unlimited),
    srun, and sbatch, which keeps the script it is given and answers with job 77."""
    bin_dir = tmp_path / "fake_slurm"
    bin_dir.mkdir()
    scripts = {
        "sinfo": "printf 'debug*|1:00:00\\ngpu|3-00:00:00\\ngpu|3-00:00:00\\nlong|infinite\\n'",
        "srun": "exit 0",
        "sbatch": f'cp "$1" {bin_dir}/sbatched.sh\necho "Submitted batch job 77"',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def paper_run_args(job_dir: Path, *extra: str) -> list[str]:
    return [
        "--config-file", PAPER_CONFIG, "--nodes", "6", "--gpus-per-node", "8",
        "--partition", "gpu", "--timeout", "4320", "--account", "vision", "--job-dir",
        str(job_dir), *extra,
    ]  # fmt: skip


def node_lines(text: str) -> dict[int, list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("node ")]
    return {
        int(line.split(":", 1)[0].split()[1]): shlex.split(line.split(":", 1)[1]) for line in lines
    }


def expected_node_command(job_dir: Path, rank: int, url: str) -> list[str]:
    return [
        sys.executable, TRAIN_NET, "--config-file", PAPER_CONFIG, "--num-gpus", "8",
        "--num-machines", "6", "--machine-rank", str(rank), "--dist-url", url, "--resume",
        "OUTPUT_DIR", str(job_dir),
    ]  # fmt: skip


def test_node_launch_takes_ranks_and_rendezvous_from_the_slurm_environment(monkeypatch):
    training = NodeTraining(
        python="python", train_net="train_net.py", config_file="c.yaml", opts=("SEED", "1"),
        output_dir="/shared/run", gpus_per_node=8,
    )  # fmt: skip
    job = {
        "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "6",
        "SLURM_JOB_NUM_NODES": "6", "SLURM_JOB_NODELIST": "gpu[011-015],gpu101",
    }  # fmt: skip
    for key, value in job.items():
        monkeypatch.setenv(key, value)
    urls = set()
    for rank in range(6):
        monkeypatch.setenv("SLURM_PROCID", str(rank))
        monkeypatch.setenv("SLURM_NODEID", str(rank))
        got_rank, machines, cmd = training.node_launch(submitit.JobEnvironment())
        assert (got_rank, machines) == (rank, 6)
        args = {cmd[i]: cmd[i + 1] for i in range(2, cmd.index("--resume"), 2)}
        assert args["--machine-rank"] == str(rank) and args["--num-machines"] == "6"
        assert args["--num-gpus"] == "8"
        assert cmd[-5:] == ["--resume", "SEED", "1", "OUTPUT_DIR", "/shared/run"]
        urls.add(args["--dist-url"])
    # one rendezvous for the job, on its first host; a requeued attempt gets another port
    assert urls == {f"tcp://gpu011:{rendezvous_port('4242', 0)}"}
    assert rendezvous_port("4242", 1) != rendezvous_port("4242", 0)
    assert rendezvous_port("4243", 0) != rendezvous_port("4242", 0)
    monkeypatch.setenv("SLURM_NTASKS", "12")  # two tasks per node: not what the job asks for
    with pytest.raises(RuntimeError, match="one task per node"):
        training.node_launch(submitit.JobEnvironment())


def test_dry_run_prints_the_paper_run_and_submits_nothing(submit_slurm, tmp_path, capsys):
    job_dir = tmp_path / "vilseg_vitb16"
    assert submit_slurm.main(paper_run_args(job_dir, "--dry-run")) == 0
    out = capsys.readouterr().out
    script = out.split("# Per-node command lines")[0]
    for line in (
        "#SBATCH --nodes=6", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu", "#SBATCH --time=4320", "#SBATCH --account=vision",
        "#SBATCH --signal=USR2@90", "#SBATCH --requeue",
        "#SBATCH --cpus-per-task=72",  # 8 processes x (8 loader workers + 1)
    ):  # fmt: skip
        assert line in script.splitlines(), (line, script)
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and srun[0].endswith(f"-m submitit.core._submit {job_dir}/submitit")
    assert f" --output {job_dir}/submitit/%j_%t_log.out " in srun[0]  # one log per node (task)
    url = f"tcp://{DRY_RUN_HOST}:{DRY_RUN_PORT}"
    assert node_lines(out) == {r: expected_node_command(job_dir, r, url) for r in range(6)}
    assert not job_dir.exists()  # a dry run writes nothing


def test_submission_reaches_sbatch_with_the_dry_run_script(
    submit_slurm, fake_slurm, tmp_path, capsys
):
    job_dir = tmp_path / "vilseg_vitb16"
    args, opts = paper_run_args(job_dir, "--sbatch", "mem=480G"), ["SOLVER.MAX_ITER", "90000"]
    assert submit_slurm.main([*args, "--dry-run", *opts]) == 0
    dry_run = capsys.readouterr().out
    assert submit_slurm.main([*args, *opts]) == 0
    assert "Submitted job 77" in capsys.readouterr().out
    sbatched = (fake_slurm / "sbatched.sh").read_text()
    assert "#SBATCH --mem=480G" in sbatched.splitlines()
    assert dry_run.startswith(f"# sbatch script (written to {job_dir}/submitit/")
    assert sbatched.strip() in dry_run  # the script printed is the script submitted
    with open(job_dir / "submitit" / "77_submitted.pkl", "rb") as f:
        training = pickle.load(f).function  # what every task of the job will run
    assert isinstance(training, NodeTraining) and training.attempt == 0
    url = f"tcp://{DRY_RUN_HOST}:{DRY_RUN_PORT}"
    for rank, cmd in node_lines(dry_run).items():
        assert cmd == training.command(machine_rank=rank, num_machines=6, dist_url=url)
        assert cmd[-4:] == ["SOLVER.MAX_ITER", "90000", "OUTPUT_DIR", str(job_dir)]


MISTAKES = {
    "unknown partition": (
        ["--partition", "gpux"],
        "Partition 'gpux' does not exist on this cluster; sinfo lists debug, gpu, long.",
    ),
    "time limit": (
        ["--partition", "debug", "--timeout", "120"],
        "--timeout 120 minutes is longer than partition 'debug' allows (60 minutes)",
    ),
    "unknown key": (
        ["MODEL.VILSEG.NUM_CLUSTER", "5"],
        "Unknown config key MODEL.VILSEG.NUM_CLUSTER. Did you mean MODEL.VILSEG.NUM_CLUSTERS?",
    ),
    "batch over the GPUs": (
        ["SOLVER.IMS_PER_BATCH", "100"],
        "SOLVER.IMS_PER_BATCH = 100 does not divide over 6 nodes x 8 GPUs = 48 processes",
    ),
    "missing config": (["--config-file", "no_such_folder/vilseg.yaml"], "does not exist"),
    # The paper's config asks for CUDA: checked where the job runs (the cluster's nodes are not
    # this machine, a local job's are).
    "no CUDA for a local job": (["--cluster", "local"], "CUDA was requested (MODEL.DEVICE=cuda)"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistakes_stop_before_submitting_with_one_message(
    mistake, submit_slurm, fake_slurm, tmp_path, capsys
):
    if mistake == "no CUDA for a local job" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    extra, message = MISTAKES[mistake]
    job_dir = tmp_path / "job"
    assert submit_slurm.main(paper_run_args(job_dir) + extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("submit_slurm.py: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1  # one message, no traceback
    assert not (fake_slurm / "sbatched.sh").exists() and not job_dir.exists()


def test_a_job_folder_holding_checkpoints_is_continued_only_with_resume(
    submit_slurm, fake_slurm, tmp_path, capsys
):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "last_checkpoint").write_text("model_0000999.pth")
    assert submit_slurm.main(paper_run_args(job_dir)) == 1
    err = capsys.readouterr().err
    assert f"{job_dir} already holds checkpoints of a run (last: model_0000999.pth)" in err, err
    assert not (fake_slurm / "sbatched.sh").exists()
    assert submit_slurm.main(paper_run_args(job_dir, "--resume")) == 0
    assert (fake_slurm / "sbatched.sh").exists()


def test_bad_partition_from_the_command_line_exits_with_the_message(fake_slurm, tmp_path):
    proc = subprocess.run(
        [sys.executable, SUBMIT_SLURM, *paper_run_args(tmp_path / "job"), "--partition", "gpux"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: Partition 'gpux' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and not (fake_slurm / "sbatched.sh").exists()


# --- jobs on this machine: submitit's local executor ---------------------------------------------


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory) -> Path:
    return synthetic_root(tmp_path_factory, "d2data_slurm")


def start_local_job(job_dir: Path, datasets_root: Path):
    """A 2-node local job of the tiny training (tools/submit_slurm.py --cluster local)."""
    plan = plan_job(
        config_file=TINY_CONFIG, opts=TRAINING, nodes=2, gpus_per_node=1, job_dir=str(job_dir),
        train_net=TRAIN_NET, cluster="local", timeout_min=30,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:  # the job's tasks inherit this environment
        for key, value in environment(datasets_root).items():
            if os.environ.get(key) != value:
                mp.setenv(key, value)
        return submit(plan)


def node_logs(job) -> list[str]:
    return [Path(job.task(k).paths.stdout).read_text() for k in range(2)]


def wait_for(job, deadline: float) -> None:
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel()
            pytest.fail("the local job did not finish:\n" + "\n".join(node_logs(job)))
        time.sleep(0.2)


def task_pids(job) -> list[int]:
    """The processes submitit's local controller started for the job's tasks (its children)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path("/proc", entry, "stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat.rpartition(")")[2].split()[1]) == job._process.pid:
            pids.append(int(entry))
    return pids


@pytest.fixture(scope="module")
def uninterrupted(datasets_root, tmp_path_factory):
    job_dir = tmp_path_factory.mktemp("slurm_uninterrupted")
    job = start_local_job(job_dir, datasets_root)
    try:
        wait_for(job, time.monotonic() + JOB_TIMEOUT_S)
    finally:
        if not job.done():
            job.cancel()
    return job, job_dir


def test_local_two_node_job_trains_and_writes_its_checkpoints(uninterrupted):
    job, job_dir = uninterrupted
    assert job.exception() is None, node_logs(job)
    assert job.results() == [
        {"node": k, "attempt": 0, "output_dir": str(job_dir)} for k in range(2)
    ]
    for name in ("model_0000001.pth", "model_0000003.pth", "model_final.pth"):
        assert (job_dir / name).is_file(), name
    assert (job_dir / "last_checkpoint").read_text().strip() == "model_final.pth"
    rows = metrics(job_dir)
    assert sorted(rows) == list(range(MAX_ITER))
    assert all(set(LOSSES) <= set(rows[it]) for it in rows)
    # one log per node: each node ran its machine rank of the same rendezvous
    logs = node_logs(job)
    urls = set()
    for rank, log in enumerate(logs):
        assert f"vilseg_d2.slurm node {rank}/2]: attempt 0" in log, log[-3000:]
        cmd = shlex.split(log.split("running: ", 1)[1].splitlines()[0])
        assert cmd[cmd.index("--machine-rank") + 1] == str(rank)
        assert cmd[cmd.index("--num-machines") + 1] == "2"
        urls.add(cmd[cmd.index("--dist-url") + 1])
    assert len(urls) == 1 and urls.pop().startswith("tcp://127.0.0.1:")
    assert "Rank of current process: 0. World size: 2" in (job_dir / "log.txt").read_text()
    assert "Rank of current process: 1. World size: 2" in (job_dir / "log.txt.rank1").read_text()


def test_preempted_local_job_is_requeued_and_resumes_with_the_losses_of_an_uninterrupted_run(
    uninterrupted, datasets_root, tmp_path
):
    _, reference_dir = uninterrupted
    want = metrics(reference_dir)
    job_dir = tmp_path / "preempted"
    job = start_local_job(job_dir, datasets_root)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        # Past the first checkpoint, with an iteration after it that the preemption will lose.
        while max(metrics(job_dir), default=-1) <= CHECKPOINT_PERIOD - 1:
            assert not job.done(), "the job ended before it could be preempted:\n" + "\n".join(
                node_logs(job)
            )
            assert time.monotonic() < deadline, node_logs(job)
            time.sleep(0.02)
        # submitit's preemption / timeout signal, sent to every task as its local controller does
        # at a timeout (LocalJob._interrupt() would send it to the controller, which it kills).
        tasks = task_pids(job)
        assert len(tasks) == 2, tasks
        for pid in tasks:
            os.kill(pid, submitit.JobEnvironment._usr_sig())
        while any(Path("/proc", str(pid)).exists() for pid in tasks):
            assert time.monotonic() < deadline, node_logs(job)
            time.sleep(0.05)
        before = metrics(job_dir)  # the requeued tasks need seconds before they train again
        wait_for(job, deadline)
    finally:
        if not job.done():
            job.cancel()
    logs = node_logs(job)
    assert job.exception() is None, logs
    # a requeue, not a crash: both nodes ran a second attempt to the end
    assert job.results() == [
        {"node": k, "attempt": 1, "output_dir": str(job_dir)} for k in range(2)
    ]
    for rank, log in enumerate(logs):
        assert "SIGUSR2: the job is preempted or about to time out" in log, log[-3000:]
        assert f"vilseg_d2.slurm node {rank}/2]: attempt 1 on " in log, log[-3000:]
    assert "Requeued job" in logs[0]
    resumed_from = logs[0].split("attempt 1 on ", 1)[1].split("resuming from ", 1)[1].split()[0]
    ckpt_iter = int(resumed_from[len("model_") : -len(".pth")])
    assert max(before) > ckpt_iter  # the preemption lost work done after the checkpoint
    assert f"Starting training from iteration {ckpt_iter + 1}" in logs[0]
    got = metrics(job_dir)
    assert sorted(got) == sorted(want) == list(range(MAX_ITER))
    for it in range(MAX_ITER):
        for key in LOSSES:
            assert got[it][key] == pytest.approx(want[it][key], abs=1e-5, rel=0), (it, key)
