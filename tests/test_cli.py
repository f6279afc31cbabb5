"""End-to-end tests of the ``trvae`` command line through ``trvae.cli.main``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from trvae import TRVAE
from trvae.cli import main

TINY = ["--n-hidden", "16", "--n-latent", "4", "--n-mmd", "8", "--max-epochs", "2", "--quiet"]


def _toy(n: int = 15, n_genes: int = 10, seed: int = 0) -> ad.AnnData:
    """``n`` cells per (cell type, condition), plus 5 stimulated-only cells of type 'S'."""
    rng = np.random.default_rng(seed)
    obs = [(c, t) for t in ("A", "B") for c in ("control", "stimulated") for _ in range(n)]
    obs += [("stimulated", "S")] * 5
    x = rng.uniform(1, 3, size=(len(obs), n_genes)) + rng.normal(scale=0.2, size=(len(obs), 1))
    x[[c == "stimulated" for c, _ in obs], :3] += 2.0
    return ad.AnnData(
        x.astype(np.float32),
        obs=pd.DataFrame(obs, columns=["condition", "cell_type"], index=map(str, range(len(obs)))),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny .h5ad and a model trained on it through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    data, model = root / "toy.h5ad", root / "model"
    _toy().write_h5ad(data)
    code = main(["train", str(data), "--condition-key", "condition", *TINY, "--out", str(model)])
    assert code == 0
    return data, model


def _error(capsys, argv, message):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trvae: error:") and "\n" not in err and "Traceback" not in err
    assert message in err, err


def test_train_writes_a_model(files):
    _, model = files
    assert (model / "config.json").is_file() and (model / "model.pt").is_file()


def test_train_with_the_mmd_grouped_by_cell_type(files, tmp_path, capsys):
    import json

    data, _ = files
    out = tmp_path / "grouped"
    argv = ["train", str(data), "--condition-key", "condition", *TINY, "--out", str(out)]
    grouping = ["--mmd-group-key", "cell_type", "--mmd-grouping", "shared", "--mmd-on", "z"]
    assert main([*argv, *grouping, "--mmd-estimator", "unbiased"]) == 0
    params = json.loads((out / "config.json").read_text())["init_params"]
    assert params["mmd_group_key"] == "cell_type" and params["mmd_groups"] == ["A", "B", "S"]
    assert params["decoder_conditioning"] == "all_layers" and params["beta"] == 1000.0
    assert params["mmd_estimator"] == "unbiased"
    assert params["mmd_grouping"] == "shared" and params["mmd_on"] == "z"
    _error(capsys, [*argv, "--overwrite", "--mmd-group-key", "donor"], "mmd_group_key 'donor'")
    # predicting with the training data: the read-out table matched to the cells' state
    pred = tmp_path / "pred.h5ad"
    predict = ["predict", str(out), str(data), "--target-condition", "stimulated", "--out"]
    assert main([*predict, str(pred), "--training-data", str(data)]) == 0
    assert "state_weights" in ad.read_h5ad(pred).uns["trvae_prediction"]
    with pytest.warns(UserWarning, match="no training data"):
        assert main([*predict, str(tmp_path / "plain.h5ad")]) == 0
    assert "state_weights" not in ad.read_h5ad(tmp_path / "plain.h5ad").uns["trvae_prediction"]
    # several cell types predicted together: a note; with --group-key each on its own
    assert "--group-key cell_type predicts each group" in capsys.readouterr().out
    control = ["--source-condition", "control", "--training-data", str(data)]
    assert main([*predict, str(pred), *control, "--group-key", "cell_type"]) == 0
    assert "--group-key" not in capsys.readouterr().out
    grouped = ad.read_h5ad(pred)
    assert grouped.uns["trvae_prediction"]["group_key"] == "cell_type"
    model = TRVAE.load(out, adata=ad.read_h5ad(data))
    source = ad.read_h5ad(data)
    source = source[source.obs["condition"] == "control"]
    for group in ("A", "B"):
        alone = model.predict(source[source.obs["cell_type"] == group], "stimulated")
        rows = (grouped.obs["cell_type"] == group).to_numpy()
        np.testing.assert_array_equal(grouped.X[rows], alone.X)


def test_train_checkpoints_and_resumes(files, tmp_path):
    data, _ = files
    ckpt, out = tmp_path / "ckpt", tmp_path / "m"
    base = ["train", str(data), "--condition-key", "condition", *TINY, "--checkpoint-dir"]
    assert main([*base, str(ckpt), "--out", str(out)]) == 0
    assert (ckpt / "checkpoint.pt").is_file()
    assert main([*base, str(ckpt), "--resume", "--out", str(out), "--overwrite"]) == 0


def test_train_with_the_cosine_schedule(files, tmp_path, capsys):
    data, _ = files
    ckpt, out = tmp_path / "ckpt", tmp_path / "m"
    base = ["train", str(data), "--condition-key", "condition", *TINY, "--checkpoint-dir"]
    cosine = ["--lr-schedule", "cosine", "--lr", "0.01"]
    assert main([*base, str(ckpt), *cosine, "--out", str(out)]) == 0
    lr = TRVAE.load(out).history["lr"].tolist()
    assert lr[0] == pytest.approx(0.01) and lr[1] < lr[0]
    resume = [*base, str(ckpt), "--resume", "--out", str(out), "--overwrite"]
    _error(capsys, resume, "written with lr_schedule='cosine'")
    assert main([*resume, *cosine]) == 0


def test_predict_selection(files, tmp_path, capsys):
    data, model = files
    out = tmp_path / "pred.h5ad"
    argv = ["predict", model, data, "--target-condition", "stimulated"]
    argv += ["--source-condition", "control", "--cell-type-key", "cell_type", "--cell-type", "B"]
    assert main([str(a) for a in [*argv, "--out", out]]) == 0
    pred = ad.read_h5ad(out)
    assert pred.shape == (15, 10)
    assert set(pred.obs["condition"]) == {"stimulated"} and set(pred.obs["cell_type"]) == {"B"}
    assert list(pred.var_names) == [f"g{j}" for j in range(10)]
    assert np.isfinite(pred.X).all()
    assert [p.name for p in tmp_path.iterdir()] == ["pred.h5ad"]  # no temp file left
    assert "wrote" in capsys.readouterr().out
    # all cells of the file, sampled, with their own conditions
    assert (
        main(
            [
                str(a)
                for a in [
                    "predict",
                    model,
                    data,
                    "--target-condition",
                    "control",
                    "--sample",
                    "--out",
                    out,
                ]
            ]
        )
        == 0
    )
    assert ad.read_h5ad(out).n_obs == 65
    # the sample is the decoder's draw, the default the quantile read-out
    sampled = ad.read_h5ad(out).uns["trvae_prediction"]["values"]
    base = ["predict", model, data, "--target-condition", "control", "--out", out]
    assert main([str(a) for a in base]) == 0
    default = ad.read_h5ad(out).uns["trvae_prediction"]["values"]
    assert main([str(a) for a in [*base, "--mode", "residual"]]) == 0
    assert (sampled, default) == ("sample", "quantile")
    assert ad.read_h5ad(out).uns["trvae_prediction"]["values"] == "residual"
    _error(capsys, [str(a) for a in [*base, "--sample", "--mode", "residual"]], "--sample draws")


def test_predict_on_a_chosen_accelerator(files, tmp_path, capsys):
    from trvae import TRVAE

    data, model = files
    out = tmp_path / "p.h5ad"
    argv = ["predict", model, data, "--target-condition", "stimulated", "--out", out]
    assert main([str(a) for a in [*argv, "--accelerator", "cpu"]]) == 0
    expected = TRVAE.load(model).predict(ad.read_h5ad(data), "stimulated", accelerator="cpu")
    np.testing.assert_array_equal(ad.read_h5ad(out).X, expected.X)
    _error(capsys, [*argv, "--accelerator", "tpu"], "accelerator must be one of")


def test_benchmark_command(files, tmp_path, capsys):
    data, _ = files
    out = tmp_path / "bench"
    argv = ["benchmark", data, "--cell-types", "A", "--methods", "mean_shift", "control"]
    assert main([str(a) for a in [*argv, "--n-boot", "5", "--out", out, "--quiet"]]) == 0
    assert (out / "metrics.csv").is_file() and (out / "figures" / "A_violin.png").is_file()
    assert "`trvae benchmark " in (out / "report.md").read_text()
    assert "r2_mean_top100" in capsys.readouterr().out


def test_errors(files, tmp_path, capsys):
    data, model = files
    (tmp_path / "x.csv").write_text("a,b\n")
    pred = ["--out", tmp_path / "p.h5ad"]
    train = ["train", data, "--out", tmp_path / "m2"]
    predict = ["predict", model, data, "--target-condition"]
    source_type = ["--source-condition", "control", "--cell-type-key", "cell_type", "--cell-type"]
    cases = [
        (["train", tmp_path / "no.h5ad", "--condition-key", "c", "--out", "m"], "no such file"),
        (["train", tmp_path / "x.csv", "--condition-key", "c", "--out", "m"], "not an .h5ad"),
        ([*train, "--condition-key", "cond"], "'cond' is not a column of adata.obs (columns: "),
        ([*train, "--condition-key", "condition", "--out", model], "exists"),
        ([*predict, "treated", *pred], "'treated' was not seen in training"),
        ([*predict, "stimulated", "--source-condition", "ctrl", *pred], "'ctrl' was not seen"),
        ([*predict, "stimulated", "--cell-type-key", "ct", "--cell-type", "A", *pred], "'ct'"),
        (
            [*predict, "stimulated", "--cell-type-key", "cell_type", "--cell-type", "Z", *pred],
            "no cells with cell_type == 'Z' (values: 'A', 'B', 'S')",
        ),
        ([*predict, "stimulated", *source_type, "S", *pred], "empty selection"),
        ([*predict, "stimulated", "--cell-type", "A", *pred], "given together"),
        (["predict", tmp_path, data, "--target-condition", "stimulated", *pred], "model"),
        (["benchmark", "nodata", "--out", tmp_path], "unknown dataset 'nodata'"),
        (["benchmark", data, "--cell-types", "Z", "--out", tmp_path], "unknown cell type"),
    ]
    for argv, message in cases:
        _error(capsys, argv, message)
    assert not (tmp_path / "p.h5ad").exists()
    assert main(["train", str(data)]) == 2  # argparse: missing options
    assert "required" in capsys.readouterr().err
    assert main(["--version"]) == 0


def test_train_prints_the_self_assessment(files, tmp_path, capsys):
    data, _ = files
    argv = ["train", str(data), "--condition-key", "condition", *TINY, "--out", tmp_path / "m"]
    assert main([str(a) for a in argv] + ["--group-key", "cell_type", "--assess-groups", "2"]) == 0
    out = capsys.readouterr().out
    assert "self-assessment (cell_type): beat the mean shift in" in out
    # the automatic anchor, per pair of conditions (no --mmd-group-key here: ratio unknown)
    assert "control -> stimulated: state ratio unknown" in out and "anchor 0.5 (50 %" in out
    assert "of 2 pseudo-held-out groups" in out
    saved = TRVAE.load(tmp_path / "m").init_params["anchor"]
    assert f"saved the chosen anchor {saved:g} with the model" in out
    pred = tmp_path / "p.h5ad"
    argv = ["predict", tmp_path / "m", data, "--target-condition", "stimulated", "--anchor", "1"]
    assert main([str(a) for a in [*argv, "--source-condition", "control", "--out", pred]]) == 0
    assert ad.read_h5ad(pred).uns["trvae_prediction"]["anchor"] == 1.0
    argv[-1] = "auto"  # read off the training groups: one of the weights on the grid
    auto = tmp_path / "auto.h5ad"
    assert main([str(a) for a in [*argv, "--source-condition", "control", "--out", auto]]) == 0
    assert ad.read_h5ad(auto).uns["trvae_prediction"]["anchor"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    argv[-1] = "half"
    assert main([str(a) for a in [*argv, "--out", tmp_path / "q.h5ad"]]) == 2
    assert "expected a number in [0, 1] or auto, got 'half'" in capsys.readouterr().err
