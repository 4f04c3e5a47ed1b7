"""Interrupted training (issue 7): a ``tools/train_net.py`` run killed with SIGKILL between two
checkpoints and restarted with ``--resume`` continues exactly as an uninterrupted run.

The trainer reads its checkpoints with :class:`ViLSegCheckpointer` (``weights_only=True``), so
the resumed run also shows that the trainer's own checkpoints load that way."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data.build import build_batch_data_loader

from vilseg_d2.data.caption_stream import (
    CaptionTrainStream,
    MapStyleCaptionSource,
    ShardCaptionSource,
)

from train_runs import kill_after_checkpoint, metrics, run, synthetic_root

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_ITER = 8
CHECKPOINT_PERIOD = 3  # checkpoints after iterations 2 and 5, model_final after 7
LOSSES = ("total_loss", "loss_vision", "loss_cross", "loss_cluster")


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory) -> Path:
    return synthetic_root(tmp_path_factory, "d2data_resume")


def command(out_dir: Path, *extra: str) -> list[str]:
    """tools/train_net.py on the tiny config: 1 process, 0 workers, fixed seed, every iteration
    logged."""
    return [
        sys.executable, os.path.join(ROOT, "tools", "train_net.py"),
        "--config-file", os.path.join(ROOT, "configs", "vilseg_tiny.yaml"), *extra,
        "OUTPUT_DIR", str(out_dir), "MODEL.DEVICE", "cpu", "SEED", "3", "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD),
        "SOLVER.LOG_PERIOD", "1", "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.VILSEG.NUM_LOCAL_CROPS", "2",
        "MODEL.VILSEG.AUX_WARMUP_ITERS", "(1, 5)",  # the auxiliary warm-up spans the checkpoint
        "MODEL.VILSEG.TEACHER", "ema",  # DINO's momentum teacher: its EMA state must resume too
    ]  # fmt: skip


def test_sigkill_then_resume_continues_like_an_uninterrupted_run(datasets_root, tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    log = run(command(reference_dir), datasets_root)
    # Iteration 0 (L_cross alone) reads a loader without the auxiliary views; the loader that
    # replaces it at iteration 1 continues the caption stream there, like the resumed run below.
    assert (
        "Iteration 1: the training loader now makes {'local_crops': True, 'transformed_view': True}"
        in log
    )
    reference = metrics(reference_dir)
    assert sorted(reference) == list(range(MAX_ITER))

    ckpt_iter = kill_after_checkpoint(
        [command(killed_dir)], datasets_root, killed_dir, CHECKPOINT_PERIOD - 1
    )
    before_kill = metrics(killed_dir)
    assert max(before_kill) > ckpt_iter  # the kill lost at least one iteration after the checkpoint
    ckpt = torch.load(
        killed_dir / f"model_{ckpt_iter:07d}.pth", map_location="cpu", weights_only=True
    )
    assert ckpt["iteration"] == ckpt_iter
    ref_ckpt = torch.load(
        reference_dir / f"model_{ckpt_iter:07d}.pth", map_location="cpu", weights_only=True
    )
    center = "criterion.center"
    assert ckpt["model"][center].abs().sum() > 0  # the DINO center the resumed run starts from
    torch.testing.assert_close(ckpt["model"][center], ref_ckpt["model"][center], atol=1e-6, rtol=0)

    log = run(command(killed_dir, "--resume"), datasets_root)
    start = ckpt_iter + 1
    assert f"Starting training from iteration {start}" in log, log[-3000:]
    resumed = metrics(killed_dir)
    assert sorted(resumed) == list(range(MAX_ITER))
    for it in range(MAX_ITER):
        for key in LOSSES + ("lr", "teacher_temp", "logit_scale", "aux_weight_factor"):
            if it == 0 and key.startswith(
                "loss_"
            ):  # L_cross alone: Detectron2 logs only total_loss
                assert key not in resumed[it] and key not in reference[it]
                continue
            assert resumed[it][key] == pytest.approx(reference[it][key], abs=1e-5, rel=0), (it, key)
        if it < start:  # iterations before the checkpoint: untouched lines of the killed run
            assert resumed[it] == before_kill[it]
    # what the killed run computed after the checkpoint, the resumed run computed again, the same
    for it in range(start, max(before_kill) + 1):
        assert resumed[it]["total_loss"] == pytest.approx(
            before_kill[it]["total_loss"], abs=1e-5, rel=0
        )

    # same final state: weights, momentum teacher, DINO center, optimizer moments, scheduler
    final = torch.load(killed_dir / "model_final.pth", map_location="cpu", weights_only=True)
    ref = torch.load(reference_dir / "model_final.pth", map_location="cpu", weights_only=True)
    torch.testing.assert_close(final["model"][center], ref["model"][center], atol=1e-6, rtol=0)
    assert any(name.startswith("teacher.") for name in ref["model"])
    for name, value in ref["model"].items():
        torch.testing.assert_close(final["model"][name], value, atol=1e-5, rtol=0, msg=name)
    final_opt, ref_opt = (c["trainer"]["_trainer"]["optimizer"]["state"] for c in (final, ref))
    assert sorted(final_opt) == sorted(ref_opt) and len(ref_opt) > 0
    for i, b in ref_opt.items():
        a = final_opt[i]
        # the heads of L_vision / L_cluster get no gradient while left out (iteration 0)
        assert float(a["step"]) == float(b["step"]) in (MAX_ITER - 1, MAX_ITER)
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], atol=1e-5, rtol=0)
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], atol=1e-6, rtol=0)
    final_sched, ref_sched = (c["trainer"]["hooks"]["LRScheduler"] for c in (final, ref))
    assert final_sched["last_epoch"] == ref_sched["last_epoch"] == MAX_ITER


def _caption_and_draw(record: dict) -> tuple:
    """A picklable stand-in for the mapper: which record, and one draw of its augmentation RNG."""
    return record["caption"], float(np.random.rand())


def _batches(num_workers: int, start_iter: int, count: int, batch: int = 3) -> list:
    sources = [
        (
            name,
            MapStyleCaptionSource(
                [{"caption": f"{name} {i}"} for i in range(n)], seed=5, description=name
            ),
            n,
        )
        for name, n in (("a", 7), ("b", 4))
    ]
    stream = CaptionTrainStream(
        sources, _caption_and_draw, max_skip_fraction=0.1, min_records=100, seed=5, batch_size=batch
    )
    stream.set_start_iteration(start_iter)
    loader = build_batch_data_loader(stream, None, batch, num_workers=num_workers)
    it = iter(loader)
    out = [next(it) for _ in range(count)]
    del it
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_caption_stream_resumes_with_the_batches_of_an_uninterrupted_run(num_workers):
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    uninterrupted = _batches(num_workers, 0, 7)
    assert np.array_equal(
        np.random.get_state()[1], state
    )  # the process's own np.random is untouched
    resumed = _batches(
        num_workers, 3, 4
    )  # odd: the new iterator's worker 0 takes over worker 1's part
    assert resumed == uninterrupted[3:]  # same records, same augmentation draws, same mixing
    # not trivially equal: the stream mixes both datasets and the draws differ per sample
    assert {c.split()[0] for b in uninterrupted for c, _ in b} == {"a", "b"}
    assert len({d for b in uninterrupted for _, d in b}) == 21


def test_shard_stream_resumes_with_a_new_seeded_shuffle(tmp_path):
    from vilseg_d2.data.skip_tracker import SkipTracker

    from data_fixtures import make_shards

    shards, good = make_shards(str(tmp_path), 3, 4)

    def keys(start: int, n: int = 12) -> list[str]:
        source = ShardCaptionSource(shards, seed=2, shuffle_buffer=4, rank=0, world_size=1)
        tracker = SkipTracker(
            dataset_name="t", source="t", max_skip_fraction=0.1, min_records=10, context="test"
        )
        records = source.iter_records(tracker, start=start)
        return [next(records)["__key__"] for _ in range(n)]

    fresh, resumed = keys(0), keys(40)
    assert set(fresh) == set(resumed) == good  # each a full pass over the data
    assert (
        resumed == keys(40) and resumed != fresh
    )  # deterministic for the skip count, not a replay
