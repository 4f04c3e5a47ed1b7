"""The per-rank function of the 2-process shard test (importable by spawned processes)."""

import json
import os


def shard_loader_rank(
    rank: int,
    world_size: int,
    init_file: str,
    shard_dir: str,
    out_dir: str,
    per_rank_epoch: int,
    num_workers: int,
):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        from detectron2.config import get_cfg

        from vilseg_d2.config import add_vilseg_config
        from vilseg_d2.data import build_caption_train_loader, register_caption_dataset

        register_caption_dataset("test_dist_shards", shards=shard_dir)
        cfg = get_cfg()
        add_vilseg_config(cfg)
        cfg.DATASETS.TRAIN = ("test_dist_shards",)
        cfg.SOLVER.IMS_PER_BATCH = 2 * world_size  # 2 per rank
        cfg.DATALOADER.NUM_WORKERS = num_workers
        cfg.DATALOADER.SHUFFLE_BUFFER_SIZE = 4
        cfg.SEED = -1  # a seed shared through all_gather, as in a real run
        v = cfg.INPUT.VILSEG
        v.GLOBAL_SIZE, v.LOCAL_SIZE, v.NUM_LOCAL_CROPS = 32, 16, 2
        captions = []
        for batch in build_caption_train_loader(cfg):
            assert len(batch) == 2
            captions += [x["caption"] for x in batch]
            if len(captions) >= 2 * per_rank_epoch:
                break
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(captions, f)
    finally:
        dist.destroy_process_group()
