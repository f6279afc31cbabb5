"""Tests of trvae_benchmarks.calibration: coverage arithmetic and a tiny leave-one-group-out run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trvae._errors import TRVAEError
from trvae.cli import main
from trvae_benchmarks import calibration
from trvae_benchmarks.calibration import (
    INTERVALS,
    LEVELS,
    coverage,
    coverage_table,
    run_calibration,
    sd_scale,
    z_value,
)

SIM = {"n_genes": 30, "cells_per_group": 20, "n_cell_types": 4}  # assess: 2 paired groups left
TINY = {"n_hidden": (16,), "n_latent": 4, "n_mmd": 8}


def test_z_values_are_two_sided_normal_quantiles():
    assert z_value(0.9) == pytest.approx(1.6449, abs=1e-4)
    assert z_value(0.95) == pytest.approx(1.9600, abs=1e-4)
    assert z_value(0.5) == pytest.approx(0.6745, abs=1e-4)
    with pytest.raises(TRVAEError):
        z_value(1.0)


def test_coverage_on_a_hand_made_case():
    # errors of 0.5, 1.0, 1.5, 3.0 standard deviations (SD 2 everywhere), and one NaN pair
    pred = np.array([0.0, 1.0, -1.0, 2.0, 0.0])
    real = pred + np.array([1.0, -2.0, 3.0, 6.0, np.nan])
    sd = np.full(5, 2.0)
    cov = coverage(real, pred, sd)
    # z: 0.674 (50 %), 1.282 (80 %), 1.645 (90 %), 1.960 (95 %); the NaN pair is left out
    assert cov == {0.5: 0.25, 0.8: 0.5, 0.9: 0.75, 0.95: 0.75}
    # |err| / sd = 0.5, 1, 1.5, 3: the smallest ratio covering 90 % is 3, 50 %: 1 -> 3 / 1.645
    scale = sd_scale(real, pred, sd, (0.5, 0.9))
    assert scale[0.5] == pytest.approx(1.0 / z_value(0.5))
    assert scale[0.9] == pytest.approx(3.0 / z_value(0.9))
    # an exact prediction is covered even with SD 0; a wrong one with SD 0 never is
    assert coverage([1.0, 2.0], [1.0, 2.5], [0.0, 0.0], (0.9,)) == {0.9: 0.5}
    assert np.isnan(coverage([np.nan], [0.0], [1.0], (0.9,))[0.9])
    with pytest.raises(TRVAEError):
        coverage([1.0], [1.0], [-1.0])


def test_calibrated_gaussian_errors_cover_their_nominal_level():
    rng = np.random.default_rng(0)
    sd = rng.uniform(0.5, 2.0, size=20000)
    pred = rng.normal(size=sd.size)
    real = pred + rng.normal(size=sd.size) * sd
    cov = coverage(real, pred, sd)
    for level in LEVELS:
        assert cov[level] == pytest.approx(level, abs=0.015)
    assert sd_scale(real, pred, sd, (0.9,))[0.9] == pytest.approx(1.0, abs=0.03)


def test_coverage_table_pools_sets_and_rows():
    genes = pd.DataFrame(
        {
            "set": ["a", "a", "a", "b"],
            "row": ["x", "x", "y", "z"],
            "real_change": [1.0, 0.0, 2.5, 0.0],
            "pred_change": [0.0, 0.0, 0.0, 0.0],
            "sd_ensemble": [1.0, 1.0, 1.0, 1.0],
            "sd_with_real_se": [10.0, 10.0, 10.0, 10.0],
            "sd_groups": [1.0, 1.0, 1.0, 1.0],
            "sd_groups_with_real_se": [1.0, 1.0, 1.0, 1.0],
            "dof_groups": [2.0, 2.0, 2.0, 0.0],  # row z: one group, no interval
            "sd_assessed": [0.5, 0.5, 0.5, 0.5],  # the between-group SD x an assess factor 0.5
            "sd_assessed_with_real_se": [0.5, 0.5, 0.5, 0.5],
        }
    )
    t = coverage_table(genes, (0.9,)).set_index(["set", "row", "interval"])
    # Student-t with 2 degrees of freedom: 2.92 SDs at 90 %, so 2.5 is inside (normal: 1.64)
    assert t.loc[("a", "y", "between-group SD (t)"), "coverage"] == 1.0
    assert t.loc[("all", "all", "between-group SD (t)"), "coverage"] == 1.0
    assert np.isnan(t.loc[("b", "z", "between-group SD (t)"), "coverage"])
    assert t.loc[("all", "all", "ensemble SD"), "coverage"] == 0.75
    assert t.loc[("all", "all", "ensemble SD"), "n_pairs"] == 4
    assert t.loc[("a", "all", "ensemble SD"), "coverage"] == pytest.approx(2 / 3)
    assert t.loc[("a", "y", "ensemble SD"), "coverage"] == 0.0
    assert t.loc[("a", "y", "ensemble SD + real-mean SE"), "coverage"] == 1.0
    assert t.loc[("a", "y", "between-group SD (t) x assess"), "coverage"] == 0.0  # 2.5 > 1.46
    assert t.loc[("a", "x", "between-group SD (t) x assess"), "coverage"] == 1.0
    assert set(t.index.get_level_values("interval")) == set(INTERVALS)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration")
    metrics = run_calibration(
        sets=["shared", "three_conditions"], out_dir=out, n_models=2, n_groups=1,
        max_epochs=2, sim_settings=SIM, model_kwargs=TINY, verbose=False,
        command="trvae benchmark calibration --test",
    )  # fmt: skip
    return metrics, out


def test_the_loop_writes_metrics_genes_and_report(tiny_run):
    metrics, out = tiny_run
    assert {"metrics.csv", "genes.csv", "report.md"} <= {p.name for p in out.iterdir()}
    written = pd.read_csv(out / "metrics.csv")
    assert len(written) == len(metrics)
    pooled = written[(written["set"] == "all") & (written["row"] == "all")]
    assert sorted(pooled["nominal"].unique()) == list(LEVELS)
    assert set(pooled["interval"]) == set(INTERVALS)
    assert pooled["coverage"].between(0, 1).all()
    genes = pd.read_csv(out / "genes.csv")
    # one held-out group per set; three_conditions: one row per perturbation; 30 genes each
    assert sorted(genes["row"].unique()) == [
        "type0",
        "type0:stimulated1",
        "type0:stimulated2",
    ]
    assert len(genes) == 3 * 30
    assert (pooled["n_pairs"] == len(genes)).all()
    # the widened SD is never narrower; coverage is monotone in the level
    assert (genes["sd_with_real_se"] >= genes["sd_ensemble"]).all()
    # the members agree (SD 0 up to rounding) at the floor and on the quiet genes, which take
    # the training data's mean shift; they disagree on the others
    assert (genes["sd_ensemble"] >= 0).all() and (genes["sd_ensemble"] > 1e-5).any()
    for _, sub in pooled.groupby("interval"):
        assert sub.sort_values("nominal")["coverage"].is_monotonic_increasing
    # the assess factor: one per fold, applied to the between-group SD
    scales = genes.groupby(["set", "group"])["assess_scale"].nunique()
    assert (scales == 1).all() and (genes["assess_scale"] > 0).all()
    np.testing.assert_allclose(genes["sd_assessed"], genes["sd_groups"] * genes["assess_scale"])
    report = (out / "report.md").read_text()
    assert "trvae benchmark calibration --test" in report
    for name in INTERVALS:
        assert name in report


def test_the_real_change_is_the_held_out_mean_minus_the_control_mean(tiny_run):
    from trvae_benchmarks.suite import hold_out, load_set

    _, out = tiny_run
    genes = pd.read_csv(out / "genes.csv")
    ds = load_set("shared", sim_settings=SIM)
    fold = hold_out(ds, "type0")
    sub = genes[genes["set"] == "shared"].set_index("gene")
    idx = [fold.var_names.index(g) for g in sub.index]
    real = fold.real["stimulated"][:, idx]
    expected = real.mean(0, dtype=np.float64) - fold.ctrl_x[:, idx].mean(0, dtype=np.float64)
    np.testing.assert_allclose(sub["real_change"], expected, rtol=1e-6, atol=1e-9)
    se = real.astype(np.float64).std(0, ddof=1) / np.sqrt(len(real))
    np.testing.assert_allclose(sub["se_real"], se, rtol=1e-6)


def test_cli_runs_calibration_and_rejects_foreign_options(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return pd.DataFrame()

    monkeypatch.setattr(calibration, "run_calibration", fake)
    args = ["benchmark", "calibration", "--quick", "--n-models", "4", "--sets", "shared"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert seen["n_models"] == 4 and seen["quick"] and seen["sets"] == ["shared"]
    assert main(["benchmark", "calibration", "--n-latent", "4"]) == 2
    assert "--n-latent" in capsys.readouterr().err


def test_an_ensemble_of_one_is_refused(tmp_path):
    with pytest.raises(TRVAEError, match="n_models"):
        run_calibration(sets=["shared"], out_dir=tmp_path, n_models=1, verbose=False)
