"""Torch's thread count survives calls into scanpy (whose numba code sets OpenMP's)."""

import torch

from trvae import datasets
from trvae._threads import torch_threads_kept
from trvae.metrics import top_degs


def test_the_thread_count_is_restored():
    before = torch.get_num_threads()
    try:
        with torch_threads_kept():
            torch.set_num_threads(before + 1)
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_top_degs_leaves_torch_on_its_thread_count():
    # scanpy's Wilcoxon test set OpenMP (shared with torch) to every core: a later fit could
    # run on them whatever set_num_threads said, and come out unlike the same fit alone
    adata = datasets.simulate_perturbation("shared", n_genes=40, cells_per_group=20)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        top_degs(adata, "condition", "stimulated", "control", n_genes=5)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
