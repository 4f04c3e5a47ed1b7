"""Cross-process negatives: with 2 gloo processes the contrastive loss sees the global batch."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vilseg_d2.modeling import cross_modal_contrastive_loss
from vilseg_d2.modeling.criterion import gather_embeddings


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, img, txt, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = img.shape[0] // world
        local_img = img[rank * n : (rank + 1) * n].clone().requires_grad_()
        local_txt = txt[rank * n : (rank + 1) * n].clone().requires_grad_()
        all_img, all_txt = gather_embeddings(local_img, local_txt)
        loss = cross_modal_contrastive_loss(all_img, all_txt, 10.0)
        loss.backward()
        out[rank] = (loss.detach(), local_img.grad, local_txt.grad, all_img.shape[0])
    finally:
        dist.destroy_process_group()


def test_two_processes_see_the_global_batch_with_gradients():
    torch.manual_seed(0)
    img, txt = torch.randn(8, 16), torch.randn(8, 16)
    ref_img, ref_txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    ref = cross_modal_contrastive_loss(ref_img, ref_txt, 10.0)
    ref.backward()

    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), img, txt, out), nprocs=2, join=True)
    for rank in range(2):
        loss, g_img, g_txt, gathered = out[rank]
        assert gathered == 8
        assert torch.allclose(loss, ref, atol=1e-6)
        # every rank's loss is the global one; all_gather's backward sums the ranks' gradients,
        # so each local row gets world_size x the global gradient (DDP then averages: exact).
        rows = slice(rank * 4, (rank + 1) * 4)
        assert torch.allclose(g_img, 2 * ref_img.grad[rows], atol=1e-6)
        assert torch.allclose(g_txt, 2 * ref_txt.grad[rows], atol=1e-6)
