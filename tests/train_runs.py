"""Running tools/train_net.py from tests: the environment, metrics.json by iteration, and a
SIGKILL of a whole training job (every process of it) after its first checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence

import pytest

from vilseg_d2.data.synthetic import generate_synthetic_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
TINY_CONFIG = os.path.join(ROOT, "configs", "vilseg_tiny.yaml")


def environment(root: Path) -> dict:
    """Offline, one thread per process, datasets under ``root``."""
    return dict(
        os.environ,
        DETECTRON2_DATASETS=str(root),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )


def run(cmd: list[str], root: Path) -> str:
    """Run a command to its end; fail the test on a non-zero exit. Returns its output."""
    proc = subprocess.run(
        cmd, env=environment(root), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def metrics(out_dir: Path) -> dict[int, dict]:
    """metrics.json by iteration; a resumed run appends, so the last line of an iteration wins.
    A line cut by the kill is ignored."""
    by_iter: dict[int, dict] = {}
    path = out_dir / "metrics.json"
    if not path.exists():
        return by_iter
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "iteration" in row and "total_loss" in row:
            by_iter[row["iteration"]] = row
    return by_iter


def kill_after_checkpoint(
    cmds: Sequence[list[str]], root: Path, out_dir: Path, first_checkpoint: int
) -> int:
    """Start one training job (one command, or one per machine), SIGKILL all of its processes
    once it has logged the iteration after ``first_checkpoint`` (so that this iteration's work is
    lost), and return the iteration of ``last_checkpoint``."""
    procs = [
        subprocess.Popen(cmd, env=environment(root), cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        for cmd in cmds
    ]
    try:
        while max(metrics(out_dir), default=-1) <= first_checkpoint:
            if any(p.poll() is not None for p in procs):
                errors = "\n".join(
                    p.stderr.read().decode()[-3000:] for p in procs if p.poll() is not None
                )
                pytest.fail("training ended before it could be killed:\n" + errors)
            time.sleep(0.02)
        for p in procs:  # every process of the job: the launchers and their workers
            os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            p.stderr.close()
    assert all(p.returncode == -signal.SIGKILL for p in procs), [p.returncode for p in procs]
    last = (out_dir / "last_checkpoint").read_text().strip()
    assert last.startswith("model_") and last != "model_final.pth", last
    return int(last[len("model_") : -len(".pth")])


def synthetic_root(tmp_path_factory, name: str) -> Path:
    """A datasets root holding a 40-image synthetic caption world (no validation images)."""
    root = tmp_path_factory.mktemp(name)
    generate_synthetic_world(
        str(root / "synthetic"), num_train=40, num_val=0, seed=0, num_workers=0
    )
    return root
