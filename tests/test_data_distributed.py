"""Two processes (gloo) read the same shards: every epoch, each sample goes to exactly one rank."""

import json

import torch.multiprocessing as mp

from data_fixtures import make_shards
from data_fixtures_dist import shard_loader_rank


def test_two_ranks_read_disjoint_samples(tmp_path):
    shards, good = make_shards(str(tmp_path / "shards"), 8, 6)  # 48 samples, 24 per rank per epoch
    per_rank_epoch = len(good) // 2
    mp.spawn(
        shard_loader_rank,
        args=(
            2,
            str(tmp_path / "init"),
            str(tmp_path / "shards"),
            str(tmp_path),
            per_rank_epoch,
            0,
        ),
        nprocs=2,
        join=True,
    )
    caps = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    for epoch in range(2):  # 2 workers per rank each read 2 whole shards per epoch
        a, b = (set(c[epoch * per_rank_epoch : (epoch + 1) * per_rank_epoch]) for c in caps)
        assert len(a) == len(b) == per_rank_epoch  # no duplicate inside a rank
        assert not a & b  # disjoint across ranks
        assert a | b == good  # and together complete
