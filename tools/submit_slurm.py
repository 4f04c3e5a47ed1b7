#!/usr/bin/env python
"""Submit ViL-Seg training to a SLURM cluster (submitit; ``pip install -e '.[slurm]'``).

    tools/submit_slurm.py --config-file configs/vilseg_vitb16.yaml --nodes 6 --gpus-per-node 8 \\
        --partition gpu --timeout 4320 --job-dir /shared/vilseg_vitb16
    tools/submit_slurm.py ... --dry-run     # print the sbatch script and each node's command line
    tools/submit_slurm.py --config-file configs/vilseg_tiny.yaml --nodes 2 --gpus-per-node 1 \\
        --cluster local MODEL.DEVICE cpu    # the same job on this machine, one task per "node"

One task per node runs ``tools/train_net.py`` with Detectron2's ``launch`` (``--gpus-per-node``
processes), its machine rank and the rendezvous taken from the job's environment; ``OUTPUT_DIR``
is the job folder unless given. On preemption or at the time limit the job is requeued and
continues from its last checkpoint, as many times as the cluster allows. The job folder holds
submitit's files and one log per node in ``submitit/``. How it works:
``vilseg_d2/engine/slurm.py``.

The config, the batch over the GPUs, the partition and its time limit are checked before
anything is submitted: a mistake stops with one message and a non-zero exit.
"""

import argparse
import os
import sys
import time

# vilseg_d2 first: it fills the registries and quiets third-party import warnings.
# isort: off
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vilseg_d2  # noqa: E402,F401

# isort: on

from vilseg_d2.engine.slurm import (  # noqa: E402
    CLUSTERS,
    SubmissionError,
    dry_run_text,
    plan_job,
    submit,
)
from vilseg_d2.errors import run_tool  # noqa: E402

TRAIN_NET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--nodes", type=int, required=True, help="nodes (one task each)")
    parser.add_argument(
        "--gpus-per-node",
        type=int,
        required=True,
        help="GPUs per node = training processes per node (CPU processes with MODEL.DEVICE cpu)",
    )
    parser.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    parser.add_argument(
        "--timeout",
        type=int,
        default=4320,
        metavar="MIN",
        help="time limit of the job in minutes; at the limit it is requeued (default: 4320)",
    )
    parser.add_argument(
        "--job-dir",
        help="job folder, on a file system every node shares (default: "
        "output/slurm/<config>_<date>_<time>); OUTPUT_DIR unless given",
    )
    parser.add_argument("--account", help="SLURM account")
    parser.add_argument(
        "--cpus-per-task",
        type=int,
        help="CPUs per node (default: one per process and per data loader worker)",
    )
    parser.add_argument("--name", default="vilseg", help="job name (default: vilseg)")
    parser.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another sbatch option, e.g. --sbatch mem=480G --sbatch qos=high (repeatable)",
    )
    parser.add_argument(
        "--cluster",
        choices=CLUSTERS,
        default="slurm",
        help="slurm, or local: the same job on this machine, one task per 'node'",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run whose checkpoints OUTPUT_DIR holds"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the sbatch script and each node's command line; submit nothing",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs, at the end"
    )
    return parser.parse_args(argv)


def _sbatch_options(pairs):
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SubmissionError(f"--sbatch takes KEY=VALUE (e.g. mem=480G), got {pair!r}.")
        options[key.lstrip("-")] = value
    return options


def _default_job_dir(config_file: str) -> str:
    stem = os.path.splitext(os.path.basename(config_file))[0]
    return os.path.join("output", "slurm", f"{stem}_{time.strftime('%Y%m%d_%H%M%S')}")


def _wait_local(job) -> int:
    """Wait for a local job; print its result. Returns the exit status."""
    try:
        while not job.done():
            time.sleep(1.0)
    except KeyboardInterrupt:
        job.cancel()
        print("Interrupted: the local job is cancelled.", file=sys.stderr)
        return 130
    error = job.exception()
    if error is not None:
        print(f"The local job failed:\n{error}", file=sys.stderr)
        return 1
    print(f"The local job finished: {job.results()}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        job_dir = args.job_dir or _default_job_dir(args.config_file)
        plan = plan_job(
            config_file=args.config_file,
            opts=args.opts,
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            job_dir=job_dir,
            train_net=TRAIN_NET,
            cluster=args.cluster,
            partition=args.partition,
            timeout_min=args.timeout,
            account=args.account,
            cpus_per_task=args.cpus_per_task,
            name=args.name,
            sbatch_options=_sbatch_options(args.sbatch),
            resume=args.resume,
            dry_run=args.dry_run,
        )
        if args.dry_run:
            print(dry_run_text(plan), end="")
            return 0
        job = submit(plan)
    except SubmissionError as e:
        print(f"{os.path.basename(__file__)}: error: {e}", file=sys.stderr)
        return 1
    logs = plan.executor_dir / f"{job.job_id}_<node>_log.out"
    print(
        f"Submitted job {job.job_id} ({args.cluster}): {args.nodes} nodes x {args.gpus_per_node} "
        f"processes per node. OUTPUT_DIR {plan.training.output_dir}; one log per node: {logs}."
    )
    for note in plan.notes:
        print(f"note: {note}")
    if args.cluster == "local":
        return _wait_local(job)
    print(f"squeue -j {job.job_id} shows it; scancel {job.job_id} stops it.")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
