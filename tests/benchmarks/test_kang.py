"""Tests of trvae_benchmarks.kang on tiny synthetic data with tiny networks."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from trvae._errors import TRVAEError
from trvae_benchmarks.baselines import make_method
from trvae_benchmarks.kang import PeakRSS, run_benchmark

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = {"n_hidden": (16,), "n_latent": 4, "n_mmd": 8}


METRICS = {
    "r2_mean_all",
    "r2_mean_top100",
    "r2_mean_top100_sd",
    "r2_var_all",
    "r2_var_top100",
    "r2_var_top100_sd",
    "delta_pearson_all",
    "delta_pearson_top100",
    "edist_top100",
    "mmd_top100",
    "edist_pca",
    "mmd_pca",
    "wasserstein_top100",
    "r2_nonzero_top100",
    "fit_seconds",
    "fit_peak_rss_mb",
} | {
    f"{c}_{m}" for c in ("specific", "shared") for m in ("n", "direction", "lfc_pearson", "lfc_r2")
}
#: Latent diagnostics: trVAE and CVAE have z and y, scGen only z; not their read-out variants.
LATENT = {
    "trVAE": {"mixing_z", "celltype_knn_z", "mixing_y", "celltype_knn_y"},
    "CVAE": {"mixing_z", "celltype_knn_z", "mixing_y", "celltype_knn_y"},
    "trVAE-paper": {"mixing_z", "celltype_knn_z", "mixing_y", "celltype_knn_y"},
    "scGen": {"mixing_z", "celltype_knn_z"},
}


def _toy(n: int = 20, n_genes: int = 15, types=("B", "NK", "T"), seed: int = 0) -> ad.AnnData:
    """``n`` cells per (cell type, condition); stimulation adds 2 to the first 5 genes."""
    rng = np.random.default_rng(seed)
    blocks, obs = [], []
    for t, name in enumerate(types):
        base = rng.uniform(1, 3, size=n_genes) + t
        for c, cond in enumerate(("control", "stimulated")):
            mean = base + 2.0 * c * (np.arange(n_genes) < 5)
            blocks.append(np.clip(mean + rng.normal(scale=0.3, size=(n, n_genes)), 0, None))
            obs += [(cond, name)] * n
    return ad.AnnData(
        np.vstack(blocks).astype(np.float32),
        obs=pd.DataFrame(obs, columns=["condition", "cell_type"], index=map(str, range(len(obs)))),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )


def test_run_benchmark_writes_metrics_report_and_figures(tmp_path, capsys):
    out = tmp_path / "res"
    df = run_benchmark(
        _toy(),
        cell_types=["T", "B"],
        out_dir=out,
        max_epochs=2,
        model_kwargs=TINY,
        n_boot=5,
        progress_bar=False,
        dataset_name="toy",
        command="trvae benchmark toy.h5ad",
    )
    # trVAE and CVAE also report their decoder-mean read-out, trVAE its likelihood samples
    methods = ["trVAE", "trVAE-decode", "trVAE-sample", "CVAE", "CVAE-decode"]
    methods += ["trVAE-paper", "trVAE-paper-decode", "scGen"]
    methods += ["mean_shift", "control"]
    csv = pd.read_csv(out / "metrics.csv")
    assert list(csv.columns) == ["method", "cell_type", "metric", "value"]
    n_latent = sum(len(v) for v in LATENT.values())
    assert len(csv) == len(df) == (len(methods) * len(METRICS) + n_latent) * 2
    assert set(csv["metric"]) == METRICS.union(*LATENT.values())
    assert set(csv["method"]) == set(methods)
    for method in methods:
        got = set(csv.loc[csv.method == method, "metric"]) - METRICS
        assert got == LATENT.get(method, set()), method
    assert list(csv["cell_type"].unique()) == ["T", "B"]
    assert not csv.duplicated(["method", "cell_type", "metric"]).any()
    pd.testing.assert_frame_equal(csv, df, check_dtype=False)
    fits = csv[(csv.metric == "fit_seconds") & (csv.cell_type == "T")].set_index("method")["value"]
    assert (fits >= 0).all() and fits["trVAE"] > fits["control"]
    # doing nothing leaves the response at zero; the mean shift recovers it
    r2 = csv[csv.metric == "r2_mean_top100"].groupby("method")["value"].mean()
    assert r2["mean_shift"] > r2["control"]

    report = (out / "report.md").read_text()
    for text in (
        "# trVAE benchmark: toy",
        "`trvae benchmark toy.h5ad`",
        "max_epochs=2",
        "n_hidden=(16,)",
        "| **mean** |",
        "How to read",
        "lower is better",
        "## Cell-type-specific responses",
        "## Latent diagnostics",
        "Number of DE genes per class",
        "`mixing_y`: trVAE beats CVAE on",
        "50-component PCA of the same cells",
    ):
        assert text in report
    assert report.count("| cell type | " + " | ".join(methods) + " |") >= 7
    links = re.findall(r"\]\((figures/[^)]+)\)", report)
    assert {Path(p).name for p in links} >= {
        "r2_mean_top100.png",
        "edist_pca.png",
        "T_mean_scatter.png",
        "B_var_scatter.png",
        "B_violin.png",
        "T_logfc.png",
        "B_latent_umap.png",
    }
    for link in links:
        assert (out / link).read_bytes()[:8] == PNG_MAGIC
    assert not list(out.rglob(".*tmp*"))
    genes = pd.read_csv(out / "response_genes.csv")
    assert set(genes["cell_type"]) == {"T", "B"} and genes["de"].all()
    assert set(genes["response"]) <= {"specific", "shared"}
    printed = capsys.readouterr().out
    assert "[1/2] T:" in printed and "[2/2] B:" in printed and "mean_shift" in printed


def test_quick_holds_out_nk_only(tmp_path):
    df = run_benchmark(
        _toy(), out_dir=tmp_path, methods=("mean_shift", "control"), quick=True, progress_bar=False
    )
    assert set(df["cell_type"]) == {"NK"}
    assert torch.get_num_threads() == 1  # restored after scanpy's DEG test changed it
    assert "n_boot=20" in (tmp_path / "report.md").read_text()
    first = run_benchmark(
        _toy(), cell_types=["T", "B"], out_dir=tmp_path, methods=("control",), quick=True
    )
    assert set(first["cell_type"]) == {"T"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": ("nope",)}, "unknown method"),
        ({"cell_types": ["X"]}, "unknown cell type"),
        ({"stimulated": "treated"}, "no cells with condition == 'treated'"),
        ({"cell_type_key": "celltype"}, "not a column of adata.obs"),
    ],
)
def test_errors(tmp_path, kwargs, message):
    with pytest.raises(TRVAEError, match=message):
        run_benchmark(_toy(n=4), out_dir=tmp_path, **kwargs)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_peak_rss_sees_an_allocation():
    with PeakRSS() as small:
        pass
    with PeakRSS() as big:
        block = np.ones((64, 1024, 1024 // 8))  # 64 MB, touched
        time.sleep(10 * big.interval)  # a fast machine allocates it between two polls
        del block
    assert big.increase_mb > 40 and small.increase_mb < big.increase_mb


def test_warm_up_accepts_every_model_argument():
    """The throwaway warm-up network takes the TRVAE arguments a benchmark may be given."""
    from trvae_benchmarks.common import warm_up

    kwargs = {"n_hidden": (8,), "mmd_group_key": "cell_type", "alpha": None, "beta": None}
    warm_up(6, {**kwargs, "decoder_conditioning": "all_layers", "seed": 0, "layer": None})


def test_precision_option_reaches_training_and_prediction(monkeypatch):
    from trvae_benchmarks import cli, kang

    seen = {}
    monkeypatch.setattr(kang, "run_benchmark", lambda adata, **kw: seen.update(kw))
    monkeypatch.setattr("trvae.datasets.kang_pbmc", lambda: None)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    argv = ["benchmark", "kang", "--precision", "bf16-mixed", "--quick"]
    args = parser.parse_args(argv)
    assert cli._benchmark(args, argv) == 0
    assert seen["train_kwargs"] == {"precision": "bf16-mixed"}
    method = make_method("trVAE", precision="bf16-mixed")
    assert method._train_kwargs() == {"precision": "bf16-mixed"}
