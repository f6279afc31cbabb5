"""``trvae bench speed`` on tiny sizes: the table's shape, not the timings."""

from __future__ import annotations

import numpy as np
from torch import nn

from trvae.cli import main
from trvae_benchmarks.speed import COLUMNS, linear_flops, synthetic_data

TINY = ["--n-hidden", "16", "16", "--n-latent", "4", "--n-mmd", "8", "--batch-size", "32"]


def test_quick_speed_table(capsys):
    argv = ["bench", "speed", "--quick", *TINY, "--genes", "30", "50", "--gemm-size", "64"]
    assert main([*argv, "--steps", "6", "--steps-per-epoch", "3", "--warmup-steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "fp32 GEMM (torch.mm 64x64" in out and "GFLOP/s" in out
    table = out.split("trVAE speed (")[1].splitlines()[1:]
    assert table[0].split() == " ".join(COLUMNS).split()
    rows = [line.split() for line in table[1:] if line.strip()]
    assert [r[:2] for r in rows] == [["30", "dense"], ["30", "csr"], ["50", "dense"], ["50", "csr"]]
    for row in rows:
        values = [float(v) for v in row[2:]]
        assert len(values) == len(COLUMNS) - 2 and all(np.isfinite(values))
        assert values[0] > 0 and values[-1] > 0 and min(values) >= 0  # cells/s


def test_speed_on_a_chosen_device_with_more_cells_predicted(capsys):
    argv = ["bench", "speed", *TINY, "--genes", "30", "--formats", "csr", "--gemm-size", "64"]
    argv += ["--steps", "3", "--steps-per-epoch", "3", "--warmup-steps", "0"]
    argv += ["--accelerator", "cpu", "--predict-cells", "100", "--predict-batch-size", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fp32 GEMM (torch.mm 64x64, cpu, " in out
    assert "100 cells predicted in batches of 16" in out
    assert main([*argv, "--accelerator", "tpu"]) == 2
    assert "accelerator must be one of" in capsys.readouterr().err


def test_linear_flops_counts_every_linear_layer():
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Sequential(nn.Linear(20, 3)))
    assert linear_flops(net, 4) == 2 * 4 * (10 * 20 + 20 * 3)


def test_synthetic_data_density_and_formats():
    dense = synthetic_data(200, 100, "dense", density=0.1)
    csr = synthetic_data(200, 100, "csr", density=0.1)
    np.testing.assert_array_equal(dense.X, csr.X.toarray())
    assert abs((dense.X > 0).mean() - 0.1) < 0.01
    counts = synthetic_data(20, 10, "csr", counts=True)
    assert np.array_equal(counts.X.data, np.round(counts.X.data))


def test_speed_bf16_mixed_measures_both_precisions(capsys):
    argv = ["bench", "speed", *TINY, "--genes", "30", "--formats", "dense", "--gemm-size", "64"]
    argv += ["--steps", "3", "--steps-per-epoch", "3", "--warmup-steps", "1"]
    assert main([*argv, "--accelerator", "cpu", "--precision", "bf16-mixed"]) == 0
    out = capsys.readouterr().out
    assert "fp32 GEMM (torch.mm 64x64" in out and "bf16 GEMM (torch.mm 64x64" in out
    table = out.split("trVAE speed (")[1].splitlines()[1:]
    assert table[0].split()[:3] == ["genes", "input", "precision"]
    assert " ".join(table[0].split()).endswith(
        "predict roofline cells/s train x fp32 predict x fp32"
    )
    rows = [line.split() for line in table[1:] if line.strip()]
    assert [r[:3] for r in rows] == [["30", "dense", "32"], ["30", "dense", "bf16-mixed"]]
    assert rows[0][-2:] == ["1.00", "1.00"] and float(rows[1][-2]) > 0
