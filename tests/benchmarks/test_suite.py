"""Tests of trvae_benchmarks.suite (leave-one-group-out generalisation suite) on tiny sets."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import trvae
from trvae._errors import TRVAEError
from trvae.cli import main
from trvae.datasets import simulate_perturbation
from trvae.pp import log_normalize
from trvae_benchmarks import suite
from trvae_benchmarks.baselines import dense
from trvae_benchmarks.suite import (
    ASSESSED_NAME,
    BEST,
    DEFAULTS_PARAGRAPH,
    MS_ALL,
    MS_GROUPS,
    add_best_mean_shift,
    compare,
    counts_set,
    eligible_groups,
    headline,
    hold_out,
    run_suite,
    win_tie_lose,
)

SIM = {"n_genes": 30, "cells_per_group": 20, "n_cell_types": 3}
TINY = {"n_hidden": (16,), "n_latent": 4, "n_mmd": 8}


def _toy(n: int = 15, n_genes: int = 12, seed: int = 0) -> ad.AnnData:
    """A user file: groups A and B with ``n`` cells per condition, S with 5 stimulated only."""
    rng = np.random.default_rng(seed)
    obs = [(c, t) for t in ("A", "B") for c in ("ctrl", "stim") for _ in range(n)]
    obs += [("stim", "S")] * 5
    x = rng.uniform(1, 3, size=(len(obs), n_genes))
    x[[c == "stim" for c, _ in obs], :4] += 1.5
    return ad.AnnData(
        x.astype(np.float32),
        obs=pd.DataFrame(obs, columns=["treatment", "celltype"], index=map(str, range(len(obs)))),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )


@pytest.fixture(scope="module")
def spied_run(tmp_path_factory):
    """One tiny suite run (two synthetic sets and a user file) with trVAE spied on."""
    calls: list[dict] = []

    class Spy(trvae.TRVAE):
        def __init__(self, adata, **kwargs):
            calls.append({"obs": list(adata.obs_names), "kwargs": dict(kwargs)})
            super().__init__(adata, **kwargs, **TINY)  # tiny network: the tests stay fast

        def assess(self, group_key, n_groups, seed, control, **train_kwargs):
            assert (n_groups, seed, train_kwargs) == (3, 0, {"max_epochs": 1})
            result = pd.DataFrame(
                {"group": list("abcabc"), "anchor": [0.5] * 3 + [1.0] * 3,
                 "own": [True] * 3 + [False] * 3,
                 "delta_pearson": [0.1, 0.5, 0.9, 0.2, 0.6, 1.0]}
            )  # fmt: skip
            result.attrs["verdict"] = "fine"
            self.init_params["anchor"] = 1.0  # as assess's choice
            return result

    out = tmp_path_factory.mktemp("suite")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(suite, "TRVAE", Spy)
        df = run_suite(
            sets=["shared", "three_conditions"], data=_toy(), condition_key="treatment",
            group_key="celltype", control="ctrl", min_cells=10, out_dir=out, max_epochs=1,
            n_boot=2, sim_settings=SIM, assess=True, command="trvae benchmark suite --test",
        )  # fmt: skip
    return df, calls, out


def test_every_group_held_out_once_and_never_trained_on(spied_run):
    df, calls, _ = spied_run
    datasets = {name: simulate_perturbation(name, **SIM) for name in ("shared", "three_conditions")}
    datasets["data"] = _toy()  # an AnnData given as data: set "data"
    expected_groups = {"shared": 3, "three_conditions": 3, "data": 2}  # S: stimulated only
    assert len(calls) == 2 * sum(expected_groups.values())  # trVAE and CVAE per fold
    k = 0
    for name, adata in datasets.items():
        cond_key, group_key, control = (
            ("treatment", "celltype", "ctrl")
            if name == "data"
            else ("condition", "cell_type", "control")
        )
        conds = adata.obs[cond_key].astype(str).to_numpy()
        groups = adata.obs[group_key].astype(str).to_numpy()
        held_out = sorted(set(df.loc[df["set"] == name, "group"]))
        assert held_out == sorted(set(groups) - {"S"})
        for group in held_out:  # folds run in sorted group order
            trvae_call, cvae_call = calls[k], calls[k + 1]
            k += 2
            held = set(adata.obs_names[(groups == group) & (conds != control)])
            kept_ctrl = set(adata.obs_names[(groups == group) & (conds == control)])
            others = set(adata.obs_names[groups != group])
            for call in (trvae_call, cvae_call):
                seen = set(call["obs"])
                assert not seen & held  # the held-out perturbed cells never reach training
                assert kept_ctrl <= seen and others <= seen  # everything else does
                assert call["kwargs"]["mmd_group_key"] == group_key
                assert call["kwargs"]["condition_key"] == cond_key
            assert "beta" not in trvae_call["kwargs"]  # package default
            assert cvae_call["kwargs"]["beta"] == 0.0


def test_three_condition_rows(spied_run):
    df, _, _ = spied_run
    rows = sorted(set(df.loc[df["set"] == "three_conditions", "row"]))
    assert rows == [f"type{t}:stimulated{s}" for t in range(3) for s in (1, 2)]
    assert sorted(set(df.loc[df["set"] == "shared", "row"])) == ["type0", "type1", "type2"]
    methods = set(df.loc[df["set"] == "three_conditions", "method"])
    assert {"trVAE", "CVAE", BEST, MS_GROUPS, MS_ALL, "control"} <= methods
    metrics = set(df["metric"])
    assert {"delta_pearson_top100", "edist_top100", "wasserstein_top100"} <= metrics
    assert "r2_nonzero_top100" in metrics


def test_mean_shift_baselines_match_hand_computation():
    adata = simulate_perturbation("three_conditions", **SIM)
    ds = suite.load_set("three_conditions", sim_settings=SIM)
    fold = hold_out(ds, "type0")
    x = np.asarray(adata.X.toarray())
    conds = adata.obs["condition"].astype(str).to_numpy()
    types = adata.obs["cell_type"].astype(str).to_numpy()
    train = ~((types == "type0") & (conds != "control"))
    assert fold.train.n_obs == train.sum() and set(fold.real) == {"stimulated1", "stimulated2"}
    np.testing.assert_allclose(
        fold.real["stimulated2"], x[(types == "type0") & (conds == "stimulated2")]
    )
    other = types != "type0"
    shift = x[other & (conds == "stimulated2")].mean(0) - x[other & (conds == "control")].mean(0)
    shift_all = x[train & (conds == "stimulated2")].mean(0) - x[train & (conds == "control")].mean(
        0
    )
    from trvae_benchmarks.baselines import make_method

    for key, expected in (("cell_type", shift), (None, shift_all)):
        m = make_method(
            "mean_shift", control="control", stimulated="stimulated2", cell_type_key=key
        ).fit(fold.train)
        np.testing.assert_allclose(m.shift_, expected, atol=1e-5)


def _long(values: dict) -> pd.DataFrame:
    """A long metrics table from {(set, row, method, metric): value}."""
    rows = [
        {"set": s, "row": r, "group": r.split(":")[0], "perturbation": "p", "method": m,
         "metric": k, "value": v}
        for (s, r, m, k), v in values.items()
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(suite.COLUMNS))


def test_best_mean_shift_is_chosen_per_metric():
    df = _long(
        {
            ("s", "a", MS_GROUPS, "delta_pearson_top100"): 0.8,
            ("s", "a", MS_ALL, "delta_pearson_top100"): 0.6,
            ("s", "a", MS_GROUPS, "edist_top100"): 2.0,  # other groups: better Pearson-Δ,
            ("s", "a", MS_ALL, "edist_top100"): 1.0,  # all cells: better E-distance
            ("s", "b", MS_GROUPS, "delta_pearson_top100"): np.nan,  # NaN loses
            ("s", "b", MS_ALL, "delta_pearson_top100"): 0.3,
            ("s", "b", MS_GROUPS, "edist_top100"): 0.5,
            ("s", "b", MS_ALL, "edist_top100"): 0.7,
            ("s", "b", MS_ALL, "r2_mean_top100_sd"): 0.1,  # not a score: no best
        }
    )
    out = add_best_mean_shift(df)
    best = out[out["method"] == BEST].set_index(["row", "metric"])["value"]
    assert best[("a", "delta_pearson_top100")] == 0.8
    assert best[("a", "edist_top100")] == 1.0
    assert best[("b", "delta_pearson_top100")] == 0.3
    assert best[("b", "edist_top100")] == 0.5
    assert ("b", "r2_mean_top100_sd") not in best.index
    assert len(add_best_mean_shift(out)) == len(out)  # idempotent


def test_compare_tolerances():
    assert compare(0.900, 0.896, "delta_pearson_top100") == 0  # |Δ| < 0.005: tie
    assert compare(0.910, 0.900, "delta_pearson_top100") == 1
    assert compare(0.890, 0.900, "delta_pearson_top100") == -1
    assert compare(1.00, 1.01, "edist_top100") == 0  # within 2 %
    assert compare(1.00, 1.10, "edist_top100") == 1  # lower is better
    assert compare(np.nan, 0.5, "delta_pearson_top100") == -1
    assert compare(0.5, np.nan, "delta_pearson_top100") == 1


def test_headline_on_hand_made_table():
    pear, edist, r2 = "delta_pearson_top100", "edist_top100", "r2_mean_top100"
    values = {}
    # (trVAE Pearson-Δ, trVAE E-dist, mean shift Pearson-Δ, mean shift E-dist) per row
    table = {
        ("kang", "A"): (0.90, 1.0, 0.80, 2.0),  # wins both
        ("kang", "B"): (0.90, 3.0, 0.80, 2.0),  # wins Pearson-Δ only
        ("kang", "C"): (0.803, 1.0, 0.80, 2.0),  # Pearson-Δ a tie: no headline win
        ("sim", "t0"): (0.70, 0.5, 0.60, 0.6),  # wins both
    }
    for (s, r), (tp, te, mp, me) in table.items():
        values.update({(s, r, "trVAE", pear): tp, (s, r, "trVAE", edist): te})
        # the other-groups shift has the Pearson-Δ, the all-cells one the E-distance
        values.update({(s, r, MS_GROUPS, pear): mp, (s, r, MS_GROUPS, edist): me + 5})
        values.update({(s, r, MS_ALL, pear): mp - 0.3, (s, r, MS_ALL, edist): me})
        values.update(
            {(s, r, "trVAE", r2): 0.9, (s, r, MS_GROUPS, r2): 0.8, (s, r, MS_ALL, r2): 0.7}
        )
    values[("kang", "A", "trVAE", r2)] = 0.5
    h = headline(_long(values))
    assert (h["wins"], h["rows"]) == (2, 4) and h["fraction"] == 0.5
    assert h["per_set"] == {"kang": (1, 3), "sim": (1, 1)}
    assert h["median_r2"]["kang"]["trVAE"] == 0.9 and h["median_r2"]["kang"][BEST] == 0.8
    wtl = win_tie_lose(add_best_mean_shift(_long(values)), pear)
    assert wtl.loc["kang"].tolist() == [2, 1, 0]
    wtl = win_tie_lose(add_best_mean_shift(_long(values)), edist)
    assert wtl.loc["kang"].tolist() == [2, 0, 1]


def test_report_csv_and_assess_written(spied_run, capsys):
    df, _, out = spied_run
    csv = pd.read_csv(out / "metrics.csv")
    assert list(csv.columns) == list(suite.COLUMNS) and len(csv) == len(df)
    assert (csv["method"] == BEST).any()
    text = (out / "report.md").read_text()
    assert "trVAE beats the better mean shift on both" in text.split("## Which data")[0]
    assert DEFAULTS_PARAGRAPH in text and "## Which data informed the defaults" in text
    assert "Spearman" in text and "`trvae benchmark suite --test`" in text
    assert (out / "figures" / "trvae_vs_best_mean_shift.png").stat().st_size > 0
    assess = df[(df["metric"] == "assess_delta_pearson") & (df["method"] == "trVAE")]
    assert len(assess) == len(set(zip(df["set"], df["row"], strict=True)))
    assert np.allclose(assess["value"], 0.5)  # the median of the spy's own-anchor rows
    chosen = df[(df["metric"] == "assess_anchor") & (df["method"] == ASSESSED_NAME)]
    assert len(chosen) == len(assess) and np.allclose(chosen["value"], 1.0)
    r2 = df[df["metric"] == "r2_mean_top100"].pivot_table(
        index=["set", "row"], columns="method", values="value"
    )
    assert (r2[ASSESSED_NAME] != r2["trVAE"]).any()  # the default row kept the default anchor
    assert f"**{ASSESSED_NAME}** (a second configuration, not the default" in text


def test_assess_without_the_method_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(suite, "TRVAE", type("NoAssess", (), {}))
    with pytest.raises(TRVAEError, match=r"TRVAE\.assess"):
        run_suite(sets=["shared"], assess=True, out_dir=tmp_path)
    assert not (tmp_path / "metrics.csv").exists()


def test_eligible_groups_need_both_conditions():
    conds = np.array(["c"] * 5 + ["s"] * 5 + ["c"] * 5 + ["s"] * 2 + ["s"] * 9)
    groups = np.array(["A"] * 10 + ["B"] * 7 + ["C"] * 9)
    assert eligible_groups(conds, groups, "c", ["s"], 5) == ["A"]
    assert eligible_groups(conds, groups, "c", ["s"], 2) == ["A", "B"]


def test_counts_set_chooses_genes_on_training_cells(monkeypatch):
    import trvae_benchmarks.kang_counts as kc

    sim = simulate_perturbation("shared", **SIM)
    counts = ad.AnnData(sim.layers["counts"], obs=sim.obs[["condition", "cell_type"]].copy())
    counts.var_names = sim.var_names
    masks = []
    real = kc.training_hvgs

    def spy(adata, train_mask, *args, **kwargs):
        masks.append(np.asarray(train_mask).copy())
        return real(adata, train_mask, *args, **kwargs)

    monkeypatch.setattr(kc, "training_hvgs", spy)
    ds = counts_set("c", counts, n_top_genes=10, min_cells=5)
    fold = hold_out(ds, "type1")
    held = ((sim.obs["cell_type"] == "type1") & (sim.obs["condition"] != "control")).to_numpy()
    assert len(masks) == 1 and (masks[0] == ~held).all()
    assert fold.train.n_vars == 10 and fold.train.n_obs == (~held).sum()
    assert fold.train.X.max() < 20  # log-normalised, not counts


def test_cli_registers_suite(monkeypatch, tmp_path, capsys):
    seen = {}
    monkeypatch.setattr(suite, "run_suite", lambda **kw: seen.update(kw))
    argv = ["benchmark", "suite", "--quick", "--sets", "shared", "--out", str(tmp_path)]
    assert main([*argv, "--assess", "--group-key", "g"]) == 0
    assert seen["sets"] == ["shared"] and seen["quick"] and seen["assess"]
    assert seen["group_key"] == "g" and seen["out_dir"] == str(tmp_path)
    assert seen["command"].startswith("trvae benchmark suite")
    assert main([*argv, "--n-hidden", "8"]) == 2
    assert "package defaults" in capsys.readouterr().err


def test_donor_set_holds_out_donors():
    ds = suite.load_set("donors", quick=True)
    assert ds.group_key == "donor"
    assert ds.groups == [f"donor{d}" for d in range(5)]
    assert list(ds.adata.obs.columns) == ["condition", "donor"]


def test_check_sets_reverse_the_direction_use_the_fine_labels_and_every_gene(monkeypatch, capsys):
    from trvae import datasets

    sim = simulate_perturbation("shared", n_genes=30, cells_per_group=40, n_cell_types=3)
    monkeypatch.setattr(datasets, "kang_pbmc", lambda: sim)
    rev = suite.load_set("kang-reverse")
    assert rev.control == "stimulated" and rev.perturbations == ["control"]
    fold = hold_out(rev, "type1")
    obs = fold.train.obs
    assert not ((obs["cell_type"] == "type1") & (obs["condition"] == "control")).any()
    assert set(fold.real) == {"control"} and (fold.ctrl.obs["condition"] == "stimulated").all()

    counts = ad.AnnData(sim.layers["counts"], obs=sim.obs[["condition", "cell_type"]].copy())
    counts.var_names = sim.var_names
    fine = counts.obs["cell_type"].astype(str).to_numpy().copy()
    fine[::4] = "nan"  # cells without a fine label, as in the Kang counts file
    fine[fine == "type2"] = "type2 fine"
    counts.obs["cell_type_fine"] = pd.Categorical(fine)
    monkeypatch.setattr(datasets, "kang_counts", lambda: counts)
    ds = suite.load_set("kang-fine")
    assert ds.group_key == "cell_type_fine" and ds.control == "control"
    assert ds.groups == ["type0", "type1", "type2 fine"]
    assert ds.adata.n_obs == (fine != "nan").sum()

    every = suite.load_set("kang-allgenes")
    assert every.group_key == "cell_type" and every.adata.n_vars == counts.n_vars
    expected = log_normalize(counts.X)
    np.testing.assert_allclose(dense(every.adata.X), dense(expected), rtol=1e-6)
    fold = hold_out(every, "type1")
    assert list(fold.var_names) == list(counts.var_names)

    seen = {}
    monkeypatch.setattr(suite, "run_suite", lambda **kw: seen.update(kw))
    assert main(["benchmark", "suite", "--sets", "kang-fine", "kang-reverse"]) == 0
    assert seen["sets"] == ["kang-fine", "kang-reverse"]
    with pytest.raises(TRVAEError, match="kang-reverse"):
        suite.load_set("nope")


def test_report_names_the_check_sets():
    from types import SimpleNamespace

    from trvae_benchmarks.suite_report import _checks_lines

    dev = [SimpleNamespace(name="shared"), SimpleNamespace(name="kang-fine")]
    text = " ".join(_checks_lines(dev))
    assert "`kang-fine`" in text and "`shared`" not in text and "informed no default" in text
    assert _checks_lines(dev[:1]) == []


def test_within_reach_counts_the_rows_the_ceiling_wins():
    from trvae_benchmarks.suite_scores import CEILING, within_reach

    pear, edist = "delta_pearson_top100", "edist_top100"
    values = {}
    # (trVAE Pearson-Δ, E, mean shift Pearson-Δ, E, ceiling Pearson-Δ or None)
    table = {
        ("kang", "A"): (0.90, 1.0, 0.80, 2.0, None),  # no truth: within reach, won
        ("sim", "t0"): (0.70, 0.5, 0.60, 0.6, 0.75),  # ceiling wins: within reach, won
        ("sim", "t1"): (0.60, 0.7, 0.60, 0.6, 0.70),  # ceiling wins: within reach, lost
        ("sim", "t2"): (0.30, 0.5, 0.40, 0.6, 0.402),  # ceiling ties: out of reach
        ("sim", "t3"): (0.50, 0.5, 0.40, 0.6, 0.30),  # out of reach, yet won
    }
    for (s, r), (tp, te, mp, me, cp) in table.items():
        values.update({(s, r, "trVAE", pear): tp, (s, r, "trVAE", edist): te})
        values.update({(s, r, MS_GROUPS, pear): mp, (s, r, MS_GROUPS, edist): me})
        values.update({(s, r, MS_ALL, pear): mp - 0.1, (s, r, MS_ALL, edist): me + 1})
        if cp is not None:
            values.update({(s, r, CEILING, pear): cp, (s, r, CEILING, edist): 9.0})
    reach = within_reach(_long(values))
    assert (reach["wins"], reach["rows"], reach["outside"]) == (2, 3, 1)
    assert reach["per_set"] == {"sim": (4, 2, 1)}


def test_identifiable_ceiling_moves_the_source_cells_by_the_expected_change():
    from trvae.datasets import expected_log_means

    ds = suite.load_set("three_conditions", quick=True, sim_settings={"n_genes": 40})
    fold = hold_out(ds, "type1")
    ceiling = suite.identifiable_ceiling(ds, fold, "stimulated2")
    effects = ds.truth.uns["simulation"]["true_log_effect"]
    others = effects[[0, 2, 3, 4], 2].mean(0)
    change = expected_log_means(ds.truth, "type1", others)
    change -= expected_log_means(ds.truth, "type1", np.zeros(40))
    np.testing.assert_allclose(ceiling - fold.ctrl_x, np.tile(change, (len(ceiling), 1)), atol=1e-5)
    donors = suite.load_set("donors", quick=True, sim_settings={"n_genes": 40})
    fold = hold_out(donors, "donor3")
    effects = donors.truth.uns["simulation"]["true_log_effect"]  # donors x states x cond x genes
    others = effects[[0, 1, 2, 4], :, 1].mean(0)
    change = expected_log_means(donors.truth, "donor3", others)
    change -= expected_log_means(donors.truth, "donor3", np.zeros_like(others))
    ceiling = suite.identifiable_ceiling(donors, fold, "stimulated")
    np.testing.assert_allclose(ceiling - fold.ctrl_x, np.tile(change, (len(ceiling), 1)), atol=1e-5)
    user = suite.file_set(_toy(), "treatment", "celltype", "ctrl", min_cells=5)
    assert suite.identifiable_ceiling(user, hold_out(user, "A"), "stim") is None
