"""Training on a SLURM cluster with submitit: one task per node, requeued on preemption or timeout.

How a job runs (``tools/submit_slurm.py`` is the command line):

* :func:`plan_job` checks everything that can be checked before submitting (the config, the batch
  over the GPUs, the partition and its time limit, an ``OUTPUT_DIR`` holding another run's
  checkpoints) and raises :class:`SubmissionError`, one message, on a user mistake.
* :func:`submit` submits :class:`NodeTraining` with one task per node. On each node it reads its
  machine rank (the task's rank) and the number of machines from the job environment, puts the
  rendezvous on the first host of the job's node list, on a port derived from the job id, and runs
  ``tools/train_net.py --num-gpus G --num-machines N --machine-rank R --dist-url tcp://HOST0:PORT
  --resume``: Detectron2's ``launch`` starts one process per GPU. ``--resume`` is always given: a
  first attempt finds no checkpoint and starts at iteration 0 (from ``MODEL.WEIGHTS``); any later
  one, whoever requeued the job, continues from the last checkpoint of ``OUTPUT_DIR``, the caption
  stream's position included (:meth:`ViLSegTrainer.resume_or_load`).
* Before the time limit SLURM sends the job submitit's signal (``--signal=USR2@90``), and at a
  preemption too where the cluster does. The training processes ignore that signal and SIGTERM:
  each node's task stops its own (SIGKILL; the work since the last checkpoint is lost, as in a
  crash between checkpoints, which resumes exactly), then task 0 has submitit requeue the job
  (:meth:`NodeTraining.checkpoint`), as many times as the cluster allows.
* ``cluster="local"`` runs the same tasks on this machine with submitit's local executor (each
  task plays a node; the rendezvous is on 127.0.0.1), which is how the tests run it.

submitit is an optional dependency (``pip install -e '.[slurm]'``), imported when used.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .slurm_node import (
    PORT_RANGE,
    NodeTraining,
    SubmissionError,
    free_port,
    import_submitit,
    last_checkpoint,
    node_command,
    rendezvous_port,
)

__all__ = [
    "JobPlan",
    "NodeTraining",
    "SubmissionError",
    "cluster_partitions",
    "dry_run_text",
    "node_command",
    "plan_job",
    "rendezvous_port",
    "submit",
]

logger = logging.getLogger(__name__)

CLUSTERS = ("slurm", "local")
# submitit gives up after this many timeouts (preemptions do not count): the cluster's own limit
# on requeues (slurm.conf's MaxBatchRequeue) is the one that matters.
_MAX_TIMEOUT_REQUEUES = 10_000
# What a dry run prints for what only the running job knows.
DRY_RUN_HOST, DRY_RUN_PORT = "HOST0", "PORT"


def _minutes(limit: str) -> Optional[float]:
    """A SLURM time limit (``[days-]hours:minutes:seconds``, ``minutes:seconds``, ``minutes``) in
    minutes; None for "infinite" or anything else."""
    days, _, clock = limit.strip().rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        day_minutes = int(days) * 1440 if days else 0
    except ValueError:
        return None
    if days:  # days-hours[:minutes[:seconds]]
        parts += [0] * (3 - len(parts))
    elif len(parts) == 1:
        parts = [0, parts[0], 0]
    elif len(parts) == 2:
        parts = [0, *parts]
    if len(parts) != 3:
        return None
    hours, minutes, seconds = parts
    return day_minutes + 60 * hours + minutes + seconds / 60


def cluster_partitions() -> Tuple[Dict[str, Optional[float]], Optional[str]]:
    """The cluster's partitions with their time limits in minutes (None: unlimited), and the
    default partition, from ``sinfo``.

    Raises:
        SubmissionError: ``sinfo`` fails.
    """
    cmd = ["sinfo", "--noheader", "--format=%P|%l"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or str(e)
        raise SubmissionError(f"{shlex.join(cmd)} failed: {detail.strip()}") from e
    partitions: Dict[str, Optional[float]] = {}
    default = None
    for line in out.splitlines():
        name, _, limit = line.strip().partition("|")
        if not name:
            continue
        if name.endswith("*"):
            name = default = name[:-1]
        partitions[name] = _minutes(limit)
    return partitions, default


def _check_partition(partition: Optional[str], timeout_min: int) -> None:
    """The partition exists, and its time limit allows ``timeout_min``.

    Raises:
        SubmissionError: it does not.
    """
    partitions, default = cluster_partitions()
    if partition is not None and partition not in partitions:
        raise SubmissionError(
            f"Partition {partition!r} does not exist on this cluster; sinfo lists "
            f"{', '.join(sorted(partitions)) or 'none'}. Pass one of them to --partition."
        )
    name = partition or default
    limit = partitions.get(name) if name else None
    if limit is not None and timeout_min > limit:
        raise SubmissionError(
            f"--timeout {timeout_min} minutes is longer than partition {name!r} allows "
            f"({limit:g} minutes): pass --timeout {int(limit)} or less (the job is requeued at "
            "its time limit and continues from its last checkpoint)."
        )


def _load_config(config_file: str, opts: Sequence[str], *, check_device: bool):
    """The config, or :class:`SubmissionError` with the reason it does not load."""
    import yaml

    from ..config import get_vilseg_cfg

    if not os.path.isfile(config_file):
        raise SubmissionError(f"Config file {config_file} does not exist.")
    if len(opts) % 2:
        raise SubmissionError(
            f"The config overrides must be KEY VALUE pairs; got {len(opts)} words: "
            f"{' '.join(opts)}"
        )
    try:
        return get_vilseg_cfg(config_file, opts, check_device=check_device)
    except KeyError as e:
        raise SubmissionError(f"{config_file}: {e.args[0] if e.args else e}") from e
    except (ValueError, TypeError, AssertionError, RuntimeError, OSError, yaml.YAMLError) as e:
        raise SubmissionError(f"{config_file}: {type(e).__name__}: {e}") from e


@dataclasses.dataclass
class JobPlan:
    """A checked job, ready to submit (:func:`submit`) or to print (:func:`dry_run_text`).

    Attributes:
        cluster: "slurm" or "local".
        nodes: number of nodes (tasks).
        job_dir: the job folder.
        executor_dir: submitit's folder in it (scripts, pickles, one log per node).
        training: what each task runs.
        parameters: the executor's parameters (sbatch's, or the local executor's).
        notes: what the checks could not check, for the user.
    """

    cluster: str
    nodes: int
    job_dir: Path
    executor_dir: Path
    training: NodeTraining
    parameters: Dict[str, Any]
    notes: List[str] = dataclasses.field(default_factory=list)


def plan_job(
    *,
    config_file: str,
    opts: Sequence[str],
    nodes: int,
    gpus_per_node: int,
    job_dir: str,
    train_net: str,
    cluster: str = "slurm",
    partition: Optional[str] = None,
    timeout_min: int = 4320,
    account: Optional[str] = None,
    cpus_per_task: Optional[int] = None,
    name: str = "vilseg",
    sbatch_options: Optional[Dict[str, str]] = None,
    resume: bool = False,
    dry_run: bool = False,
) -> JobPlan:
    """Check a training job and plan it, submitting nothing and writing nothing.

    Args:
        config_file: the config.
        opts: config overrides, ``[KEY, VALUE, ...]``; without ``OUTPUT_DIR`` it is ``job_dir``.
        nodes: nodes of the job (one task each).
        gpus_per_node: GPUs per node: processes per node (CPU processes with ``MODEL.DEVICE cpu``).
        job_dir: the job folder (on a file system every node shares).
        train_net: path of ``tools/train_net.py``.
        cluster: "slurm", or "local" for this machine (submitit's local executor).
        partition: SLURM partition (default: the cluster's).
        timeout_min: the job's time limit; the job is requeued when it is reached.
        account: SLURM account.
        cpus_per_task: CPUs per node; default one per process and data loader worker.
        name: the job's name.
        sbatch_options: other sbatch options, ``{"mem": "480G", "qos": "high"}``.
        resume: continue the run whose checkpoints ``OUTPUT_DIR`` holds.
        dry_run: only to print: a missing ``sbatch`` is not an error.

    Raises:
        SubmissionError: a mistake, with what to do.
    """
    if cluster not in CLUSTERS:
        raise SubmissionError(f"--cluster must be one of {', '.join(CLUSTERS)}, got {cluster!r}.")
    for flag, value in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if value < 1:
            raise SubmissionError(f"{flag} must be at least 1, got {value}.")
    if timeout_min < 1:
        raise SubmissionError(f"--timeout must be at least 1 minute, got {timeout_min}.")
    config_file = os.path.abspath(config_file)
    opts = list(opts)
    cfg = _load_config(config_file, opts, check_device=cluster == "local")
    world = nodes * gpus_per_node
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise SubmissionError(
            f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} does not divide over "
            f"{nodes} nodes x {gpus_per_node} GPUs = {world} processes: choose a batch that is a "
            f"multiple of {world}, or other --nodes / --gpus-per-node."
        )

    # OUTPUT_DIR: the user's, else the job folder; absolute, given last on every node.
    user_output = [i for i in range(0, len(opts), 2) if opts[i] == "OUTPUT_DIR"]
    output_dir = os.path.abspath(cfg.OUTPUT_DIR if user_output else job_dir)
    for i in reversed(user_output):
        del opts[i : i + 2]
    job_dir_path = Path(job_dir).absolute()
    notes = []
    last = last_checkpoint(output_dir)
    if last and not resume:
        raise SubmissionError(
            f"{output_dir} already holds checkpoints of a run (last: {last}). Pass --resume to "
            "continue that run, or another --job-dir (or OUTPUT_DIR) to start a new one."
        )
    if resume and not last:
        notes.append(f"--resume: {output_dir} holds no checkpoint yet; training starts at 0.")
    if not os.path.isfile(train_net):
        raise SubmissionError(f"{train_net} does not exist (tools/train_net.py is needed).")

    training = NodeTraining(
        python=sys.executable,
        train_net=os.path.abspath(train_net),
        config_file=config_file,
        opts=tuple(str(o) for o in opts),
        output_dir=output_dir,
        gpus_per_node=gpus_per_node,
        dist_port=free_port() if cluster == "local" else None,
    )
    executor_dir = job_dir_path / "submitit"
    if cluster == "local":
        on_gpu = str(cfg.MODEL.DEVICE).startswith("cuda")
        parameters = {
            "tasks_per_node": nodes,  # each task plays a node
            "gpus_per_node": gpus_per_node if on_gpu else 0,
            "timeout_min": timeout_min,
            "stderr_to_stdout": True,
        }
        return JobPlan(cluster, nodes, job_dir_path, executor_dir, training, parameters, notes)

    if shutil.which("sinfo"):
        _check_partition(partition, timeout_min)
    else:
        notes.append("sinfo not found: the partition and its time limit are not checked.")
    if not dry_run and not shutil.which("sbatch"):
        raise SubmissionError(
            "sbatch not found: this machine is not a SLURM login node. Submit from one, run here "
            "with --cluster local, or print the job with --dry-run."
        )
    if cpus_per_task is None:
        cpus_per_task = gpus_per_node * (cfg.DATALOADER.NUM_WORKERS + 1)
    parameters = {
        "job_name": name,
        "nodes": nodes,
        "ntasks_per_node": 1,
        "gpus_per_node": gpus_per_node,
        "cpus_per_task": cpus_per_task,
        "time": timeout_min,
        "stderr_to_stdout": True,  # one log per node
        # requeue-able whatever the cluster's default (JobRequeue), for submitit's requeue
        "additional_parameters": {"requeue": True, **(sbatch_options or {})},
    }
    if partition:
        parameters["partition"] = partition
    if account:
        parameters["account"] = account
    return JobPlan("slurm", nodes, job_dir_path, executor_dir, training, parameters, notes)


def _executor(plan: JobPlan, *, script_only: bool = False):
    submitit = import_submitit()
    if plan.cluster == "local":
        executor = submitit.LocalExecutor(plan.executor_dir, max_num_timeout=_MAX_TIMEOUT_REQUEUES)
    else:
        cls = submitit.SlurmExecutor
        if script_only:

            class _ScriptOnly(submitit.SlurmExecutor):
                """submitit's SLURM executor where srun is missing, to write a script only."""

                @classmethod
                def affinity(cls) -> int:
                    return 1

            cls = _ScriptOnly
        executor = cls(plan.executor_dir, max_num_timeout=_MAX_TIMEOUT_REQUEUES)
    try:
        executor.update_parameters(**plan.parameters)
    except ValueError as e:  # submitit's check of the sbatch options
        raise SubmissionError(f"submitit refuses the job's parameters: {e}") from e
    return executor


def submit(plan: JobPlan):
    """Submit ``plan`` (from :func:`plan_job`). Returns submitit's job.

    Raises:
        SubmissionError: sbatch refused the job (its message).
    """
    executor = _executor(plan)
    plan.job_dir.mkdir(parents=True, exist_ok=True)
    try:
        return executor.submit(plan.training)
    except Exception as e:
        if plan.cluster != "slurm":
            raise
        raise SubmissionError(f"sbatch refused the job: {e}") from e


def dry_run_text(plan: JobPlan) -> str:
    """What :func:`submit` would submit: the sbatch script (SLURM) and each node's command line,
    with ``HOST0`` / ``PORT`` for what only the running job knows."""
    lines = []
    if plan.cluster == "slurm":
        executor = _executor(plan, script_only=True)
        script = executor._make_submission_file_text(executor._submitit_command_str, "dry-run")
        lines += [
            f"# sbatch script (written to {plan.executor_dir}/<job id>_submission.sh):",
            script.rstrip(),
            "",
            f"# Per-node command lines: task R (node R) runs the line of machine rank R. "
            f"{DRY_RUN_HOST}: the first host of SLURM_JOB_NODELIST; {DRY_RUN_PORT}: "
            f"{PORT_RANGE[0]}-{PORT_RANGE[1] - 1}, from the job id and attempt.",
        ]
        host, port = DRY_RUN_HOST, DRY_RUN_PORT
    else:
        lines.append(f"# {plan.nodes} local tasks, one per 'node', on this machine:")
        host, port = "127.0.0.1", str(plan.training.dist_port)
    for rank in range(plan.nodes):
        cmd = plan.training.command(
            machine_rank=rank, num_machines=plan.nodes, dist_url=f"tcp://{host}:{port}"
        )
        lines.append(f"node {rank}: {shlex.join(cmd)}")
    lines += [f"# note: {n}" for n in plan.notes]
    return "\n".join(lines) + "\n"
