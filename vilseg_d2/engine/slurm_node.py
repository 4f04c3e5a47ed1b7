"""What each node of a SLURM job runs (:class:`NodeTraining`): its ranks and rendezvous from the
job environment, ``tools/train_net.py`` in a process group of its own, stopped and requeued on the
scheduler's signal. The job's overview and its submission: :mod:`vilseg_d2.engine.slurm`.

submitit is an optional dependency (``pip install -e '.[slurm]'``), imported when used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "NodeTraining",
    "SubmissionError",
    "import_submitit",
    "last_checkpoint",
    "node_command",
    "rendezvous_port",
]

logger = logging.getLogger(__name__)

# The rendezvous ports: the same on every node of a job, derived from its id and attempt.
PORT_RANGE = (20_000, 60_000)


class SubmissionError(ValueError):
    """A mistake found before submitting (config, partition, time limit, job folder): its message
    says what is wrong and what to do."""


def import_submitit():
    """submitit, or :class:`SubmissionError` saying how to install it."""
    try:
        import submitit
    except ImportError as e:
        raise SubmissionError(
            "submitit is not installed: pip install -e '.[slurm]' (from the repository root)."
        ) from e
    return submitit


def rendezvous_port(job_id: str, attempt: int) -> int:
    """The port of the job's rendezvous on its first node: derived from the job id and the attempt
    (a requeued job keeps its id), so every node computes the same one without talking."""
    digest = hashlib.sha256(f"{job_id}:{attempt}".encode()).hexdigest()
    low, high = PORT_RANGE
    return low + int(digest, 16) % (high - low)


def free_port() -> int:
    """A port free on 127.0.0.1 now (the rendezvous of a job on this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(
    *,
    python: str,
    train_net: str,
    config_file: str,
    opts: Sequence[str],
    output_dir: str,
    gpus_per_node: int,
    num_machines: int,
    machine_rank: int,
    dist_url: str,
) -> List[str]:
    """The command line of one node: ``tools/train_net.py`` with Detectron2's multi-machine
    arguments, ``--resume``, the config overrides and ``OUTPUT_DIR`` last."""
    return [
        python, train_net, "--config-file", config_file,
        "--num-gpus", str(gpus_per_node), "--num-machines", str(num_machines),
        "--machine-rank", str(machine_rank), "--dist-url", dist_url, "--resume",
        *opts, "OUTPUT_DIR", output_dir,
    ]  # fmt: skip


def last_checkpoint(output_dir: str) -> Optional[str]:
    """The file name Detectron2's ``last_checkpoint`` names in ``output_dir``, if any."""
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _scheduler_signals() -> Tuple[signal.Signals, signal.Signals]:
    """SIGTERM and submitit's preemption / timeout signal (USR2 unless SUBMITIT_PREEMPT_SIGNAL)."""
    submitit = import_submitit()
    return signal.SIGTERM, getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


def _start_training(command: List[str]) -> subprocess.Popen:
    """Start ``command`` in a process group of its own, ignoring the scheduler's signals (ignored
    signals stay ignored through exec and in every process it starts). Call it with those
    signals blocked (the child unblocks them)."""
    signals = _scheduler_signals()

    def ignore_scheduler_signals():  # in the child, before exec
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)

    return subprocess.Popen(command, start_new_session=True, preexec_fn=ignore_scheduler_signals)


def _kill_training(proc: subprocess.Popen) -> None:
    """SIGKILL the training process group (Detectron2's launcher, its workers and their loaders),
    without waiting: safe in a signal handler that interrupted ``proc.wait()``. The group is still
    ``proc``'s while ``proc`` is not reaped."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _node_logger(node: int, num_nodes: int) -> logging.Logger:
    """The task's own log lines, to its stdout (the node's log file), Detectron2's format."""
    log = logging.getLogger(f"{__name__}.node")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter(
            f"[%(asctime)s vilseg_d2.slurm node {node}/{num_nodes}]: %(message)s",
            datefmt="%m/%d %H:%M:%S",
        )
    )
    log.addHandler(handler)
    return log


@dataclasses.dataclass
class NodeTraining:
    """What each task of the job runs: its node's ``tools/train_net.py`` (see the module's
    docstring). submitit calls :meth:`checkpoint` on task 0 when the job is preempted or about to
    time out, and requeues the submission it returns.

    Attributes:
        python: the interpreter (the submitting one: the job runs submitit with it too).
        train_net: path of ``tools/train_net.py``.
        config_file: the config, an absolute path.
        opts: the config overrides, without ``OUTPUT_DIR``.
        output_dir: ``OUTPUT_DIR``, on a file system every node shares.
        gpus_per_node: processes per node (GPUs; CPU processes with ``MODEL.DEVICE cpu``).
        attempt: 0 for the submitted job, +1 at each requeue by :meth:`checkpoint`.
        dist_port: the rendezvous port; None: :func:`rendezvous_port` of the job id and attempt
            (the local executor picks a free port on this machine instead).
    """

    python: str
    train_net: str
    config_file: str
    opts: Tuple[str, ...]
    output_dir: str
    gpus_per_node: int
    attempt: int = 0
    dist_port: Optional[int] = None

    def command(self, *, machine_rank: int, num_machines: int, dist_url: str) -> List[str]:
        """The command line of node ``machine_rank`` (:func:`node_command`)."""
        return node_command(
            python=self.python, train_net=self.train_net, config_file=self.config_file,
            opts=self.opts, output_dir=self.output_dir, gpus_per_node=self.gpus_per_node,
            num_machines=num_machines, machine_rank=machine_rank, dist_url=dist_url,
        )  # fmt: skip

    def node_launch(self, env) -> Tuple[int, int, List[str]]:
        """``(machine rank, number of machines, command line)`` of this task in the job
        environment ``env`` (``submitit.JobEnvironment()``): one task per node, so the task's
        rank is the machine rank; the rendezvous is on the first host of the node list
        (127.0.0.1 for the local executor, whose tasks all run here).

        Raises:
            RuntimeError: a SLURM job with more than one task on a node.
        """
        local = env.cluster == "local"
        if not local and env.num_tasks != env.num_nodes:
            raise RuntimeError(
                f"The job has {env.num_tasks} tasks on {env.num_nodes} nodes; it must run one "
                f"task per node (Detectron2's launch starts the node's {self.gpus_per_node} "
                "processes)."
            )
        host = "127.0.0.1" if local else env.hostnames[0]
        port = self.dist_port or rendezvous_port(str(env.job_id), self.attempt)
        rank, machines = env.global_rank, env.num_tasks
        url = f"tcp://{host}:{port}"
        return rank, machines, self.command(machine_rank=rank, num_machines=machines, dist_url=url)

    def __call__(self) -> Dict[str, Any]:
        """Run this node's training to its end. Returns ``{"node", "attempt", "output_dir"}``.

        Raises:
            RuntimeError: the training failed (not stopped by the scheduler's signal); the job
                is not requeued.
        """
        submitit = import_submitit()
        env = submitit.JobEnvironment()
        rank, machines, command = self.node_launch(env)
        log = _node_logger(rank, machines)
        last = last_checkpoint(self.output_dir)
        log.info(
            f"attempt {self.attempt} on {env.hostname} (job {env.job_id}), "
            + (f"resuming from {last}" if last else "no checkpoint yet: starting at iteration 0")
        )
        log.info("running: " + shlex.join(command))

        _, preemption = _scheduler_signals()
        submitit_handler = signal.getsignal(preemption)
        running: Dict[str, Any] = {}

        def on_preemption(signum, frame):
            name = signal.Signals(signum).name
            log.warning(
                f"{name}: the job is preempted or about to time out; stopping training on this "
                f"node (last checkpoint: {last_checkpoint(self.output_dir) or 'none'})."
            )
            running["stopped_by"] = name
            if "proc" in running:
                _kill_training(running["proc"])
            if callable(submitit_handler):
                # Task 0: checkpoint() and the requeue, then exit; the others return here.
                submitit_handler(signum, frame)

        signal.signal(preemption, on_preemption)
        try:
            # Blocked until the process is known, so that the handler can stop it.
            signal.pthread_sigmask(signal.SIG_BLOCK, _scheduler_signals())
            try:
                running["proc"] = proc = _start_training(command)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _scheduler_signals())
            code = proc.wait()
        finally:
            if "proc" in running:  # KeyboardInterrupt, SystemExit: leave nothing running
                _kill_training(running["proc"])
                running["proc"].wait()
            signal.signal(preemption, submitit_handler)
        if "stopped_by" in running:
            log.info("training stopped for the requeue (task 0 requeues the job); exiting.")
            sys.exit(0)  # no result: the requeued job runs this node again
        if code != 0:
            raise RuntimeError(
                f"Node {rank}: tools/train_net.py exited with code {code} (attempt "
                f"{self.attempt}); its output is this node's log, Detectron2's log is "
                f"{os.path.join(self.output_dir, 'log.txt')}."
            )
        log.info("training finished.")
        return {"node": rank, "attempt": self.attempt, "output_dir": self.output_dir}

    def checkpoint(self):
        """submitit's hook on task 0 at a preemption or before a timeout: the submission to
        requeue, the next attempt of the same training (it resumes from the last checkpoint of
        ``OUTPUT_DIR``; a new rendezvous port)."""
        submitit = import_submitit()
        again = dataclasses.replace(
            self,
            attempt=self.attempt + 1,
            dist_port=free_port() if self.dist_port is not None else None,
        )
        last = last_checkpoint(self.output_dir)
        logging.getLogger(f"{__name__}.node").info(
            f"requeueing: attempt {again.attempt} will resume from "
            + (last or "iteration 0 (no checkpoint was written)")
        )
        return submitit.helpers.DelayedSubmission(again)
