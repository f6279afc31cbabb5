"""Crash safety: atomic saves, training resumed after SIGKILL, and weights-only loading.

The crashes are real: a subprocess is killed with SIGKILL (no ``finally``, no atexit) in the
middle of writing a model or a checkpoint, or between two epochs of ``trvae train``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from trvae import TRVAE, ModelLoadError
from trvae.cli import main
from trvae.module import TRVAEModule

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

TINY = {"n_hidden": (16,), "n_latent": 4, "n_mmd": 8}
TINY_FLAGS = ["--n-hidden", "16", "--n-latent", "4", "--n-mmd", "8", "--threads", "1"]
QUIET = {"progress_bar": False, "batch_size": 32}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
PRELUDE = "import torch\ntorch.set_num_threads(1)\n"
KILLED = -signal.SIGKILL


def _script(code: str, *args) -> list[str]:
    return [sys.executable, "-c", PRELUDE + textwrap.dedent(code), *map(str, args)]


def _run(code: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        _script(code, *args), capture_output=True, text=True, timeout=timeout, env=ENV
    )


@pytest.fixture(scope="module")
def adata(synthetic_adata):
    return synthetic_adata(n_cells_per_group=15, n_genes=12, n_cell_types=2, seed=5)


@pytest.fixture(scope="module")
def data_file(adata, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "data.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def trained(adata) -> TRVAE:
    return TRVAE(adata, condition_key="condition", **TINY).train(max_epochs=3, **QUIET)


def _outputs(model: TRVAE, adata) -> tuple[np.ndarray, np.ndarray]:
    return model.predict(adata, "stimulated").X, model.get_latent(adata)


# ------------------------------------------------------------------ atomic save
# The subprocess builds a different model (another seed) and saves it over the old one with
# overwrite=True, and is SIGKILLed at the given point of the save.
KILL_DURING_SAVE = """
    import io, os, signal, sys
    import anndata as ad
    from trvae import TRVAE

    point, data, target = sys.argv[1:]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if point == "weights":  # half of model.pt is on disk
        real_save = torch.save
        def save(obj, f, *args, **kwargs):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            raw = buffer.getvalue()
            with open(f, "wb") as handle:
                handle.write(raw[: len(raw) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            die()
        torch.save = save
    elif point == "commit":  # the old model is moved aside, the new one not yet in place
        real_replace = os.replace
        def replace(src, dst):
            if os.path.abspath(dst) == os.path.abspath(target):
                die()
            real_replace(src, dst)
        os.replace = replace
    model = TRVAE(ad.read_h5ad(data), condition_key="condition", n_hidden=(16,), n_latent=4,
                  n_mmd=8, seed=123)
    model.save(target, overwrite=True)
    print("save returned")
"""


@pytest.mark.parametrize("point", ["weights", "commit"])
def test_save_killed_midway_keeps_the_old_model(point, trained, adata, data_file, tmp_path):
    target = tmp_path / "A"
    trained.save(target)
    before = _outputs(trained, adata)

    result = _run(KILL_DURING_SAVE, point, data_file, target)
    assert result.returncode == KILLED, result.stderr
    assert "save returned" not in result.stdout
    if point == "commit":  # between the two renames: only the backup holds a model
        assert not target.exists() and (tmp_path / ".A.old").is_dir()
    else:
        assert any(p.name.startswith(".A.tmp-") for p in tmp_path.iterdir())  # debris only

    loaded = TRVAE.load(target)
    for old, new in zip(before, _outputs(loaded, adata), strict=True):
        np.testing.assert_array_equal(new, old)
    for key, value in trained.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value), key

    # the next save recovers: the new model is in place and the backup is gone
    other = TRVAE(adata, condition_key="condition", seed=7, **TINY)
    other.save(target, overwrite=True)
    np.testing.assert_array_equal(TRVAE.load(target).get_latent(adata), other.get_latent(adata))
    assert not (tmp_path / ".A.old").exists()


# ------------------------------------------------------------------ corrupt files
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_config(**changes):
    def edit(path: Path) -> None:
        config = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                del config[key]
            elif isinstance(value, dict):
                config[key].update(value)
            else:
                config[key] = value
        path.write_text(json.dumps(config))

    return edit


def _other_architecture(path: Path) -> None:
    torch.save(TRVAEModule(12, 2, n_hidden=(8,), n_latent=4, n_mmd=8).state_dict(), path)


CORRUPTIONS = {
    "model.pt truncated": ("model.pt", _truncate),
    "model.pt empty": ("model.pt", lambda p: p.write_bytes(b"")),
    "model.pt garbage": ("model.pt", lambda p: p.write_bytes(os.urandom(512))),
    "model.pt other architecture": ("model.pt", _other_architecture),
    "model.pt missing": ("model.pt", Path.unlink),
    "config.json truncated": ("config.json", _truncate),
    "config.json empty": ("config.json", lambda p: p.write_text("")),
    "config.json garbage": ("config.json", lambda p: p.write_bytes(b"\xff\xfe\x00garbage")),
    "config.json not an object": ("config.json", lambda p: p.write_text("[1, 2]")),
    "config.json field missing": ("config.json", _edit_config(var_names=None)),
    "config.json bad size": ("config.json", _edit_config(init_params={"n_latent": -1})),
    "config.json bad conditions": ("config.json", _edit_config(conditions="ab")),
    "config.json missing": ("config.json", Path.unlink),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_files_give_model_load_error_naming_the_file(case, trained, tmp_path):
    name, corrupt = CORRUPTIONS[case]
    trained.save(tmp_path / "m")
    corrupt(tmp_path / "m" / name)
    with pytest.raises(ModelLoadError) as info:
        TRVAE.load(tmp_path / "m")
    assert name in str(info.value)


def test_corrupt_history_is_dropped_not_fatal(trained, adata, tmp_path):
    trained.save(tmp_path / "m")
    (tmp_path / "m" / "history.csv").write_bytes(b'\xff\x00,,\n"unterminated')
    loaded = TRVAE.load(tmp_path / "m")
    assert loaded.history.empty
    np.testing.assert_array_equal(loaded.get_latent(adata), trained.get_latent(adata))


# ------------------------------------------------------------------ weights only
def test_saved_weights_load_with_weights_only(trained, tmp_path):
    trained.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert state.keys() == trained.module.state_dict().keys()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = TRVAE.load(tmp_path / "m").module
    fresh.load_state_dict(state)


class Payload:
    """Unpickling this opens (creates) a file: what a malicious model.pt could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class Plain:
    def __init__(self) -> None:
        self.weights = torch.zeros(3)


@pytest.mark.parametrize("kind", ["payload", "instance", "instance_in_state_dict"])
def test_pickled_objects_in_model_pt_are_refused(kind, trained, tmp_path):
    marker = tmp_path / "pwned"
    trained.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.pt"
    if kind == "payload":
        torch.save(Payload(marker), weights)
    elif kind == "instance":
        torch.save(Plain(), weights)
    else:
        torch.save({**trained.module.state_dict(), "extra": Plain()}, weights)
    with pytest.raises(ModelLoadError, match=r"model\.pt") as info:
        TRVAE.load(tmp_path / "m")
    message = str(info.value)
    assert "never unpickles" in message and "Unsupported global" in message
    assert "weights_only` set to `False`" not in message  # no advice to unpickle it anyway
    assert not marker.exists()  # nothing was executed
    if kind == "payload":  # and the payload was live: a full unpickling runs it
        torch.load(weights, weights_only=False)
        assert marker.exists()


# ------------------------------------------------------------------ training checkpoints
SLOW_CLI = """
    import time
    import trvae.train.checkpoint as M
    from trvae.cli import main

    real_save = M.atomic_torch_save
    def slow_save(state, path):  # slow epochs, so that the kill lands mid-run
        real_save(state, path)
        time.sleep(0.25)
    M.atomic_torch_save = slow_save
    raise SystemExit(main())
"""


def _history(state: dict) -> pd.DataFrame:
    return pd.DataFrame(state["history"])


def test_cli_train_killed_then_resumed(data_file, tmp_path):
    out, ck = tmp_path / "M", tmp_path / "CK"
    argv = ["train", data_file, "--condition-key", "condition", "--out", out]
    argv += ["--checkpoint-dir", ck, "--max-epochs", "30", "--quiet", *TINY_FLAGS]
    proc = subprocess.Popen(
        _script(SLOW_CLI, *argv), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 90
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if (ck / "checkpoint.pt").exists():  # replaced atomically: always complete
                state = torch.load(ck / "checkpoint.pt", weights_only=True)
                if len(state["history"]) >= 3:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:  # killed above, or out of time
            proc.kill()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == KILLED, stderr.decode()
    assert not out.exists()
    state = torch.load(ck / "checkpoint.pt", weights_only=True)
    done = len(state["history"])
    assert 3 <= done < 30

    # Mark the checkpoint's first epoch: a resumed run keeps it, a restarted one would not.
    state["history"][0]["train_loss"] = 12345.0
    torch.save(state, ck / "checkpoint.pt")
    resumed = subprocess.run(
        [sys.executable, "-m", "trvae.cli", *map(str, argv), "--resume"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    history = pd.read_csv(out / "history.csv")
    assert done < len(history) <= 30
    assert list(history["epoch"]) == list(range(len(history)))
    assert history["train_loss"].iloc[0] == 12345.0
    before = _history(state)
    np.testing.assert_allclose(history["val_loss"].iloc[:done], before["val_loss"], rtol=1e-12)
    model = TRVAE.load(out)
    assert model.is_trained and len(model.history) == len(history)


KILL_DURING_CHECKPOINT = """
    import io, os, signal, sys
    import anndata as ad
    from trvae import TRVAE

    data, ck, epochs = sys.argv[1:]
    real_save = torch.save
    calls = 0
    def save(obj, f, *args, **kwargs):
        global calls
        calls += 1
        if calls == 4:  # the 4th epoch's checkpoint: half of it on disk, then SIGKILL
            buffer = io.BytesIO()
            real_save(obj, buffer)
            raw = buffer.getvalue()
            with open(f, "wb") as handle:
                handle.write(raw[: len(raw) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f, *args, **kwargs)
    torch.save = save
    model = TRVAE(ad.read_h5ad(data), condition_key="condition", n_hidden=(16,), n_latent=4,
                  n_mmd=8)
    model.train(max_epochs=int(epochs), early_stopping=False, progress_bar=False, batch_size=32,
                checkpoint_dir=ck)
    print("finished")
"""


def test_api_train_killed_then_resumed_equals_uninterrupted(adata, data_file, tmp_path):
    ck, epochs = tmp_path / "CK", 7
    result = _run(KILL_DURING_CHECKPOINT, data_file, ck, epochs)
    assert result.returncode == KILLED, result.stderr
    assert "finished" not in result.stdout
    assert any(p.name.startswith(".checkpoint.pt.tmp-") for p in ck.iterdir())  # the torn write
    state = torch.load(ck / "checkpoint.pt", weights_only=True)
    assert len(state["history"]) == 3  # the last complete checkpoint

    def model() -> TRVAE:
        return TRVAE(adata, condition_key="condition", **TINY)

    train = {"max_epochs": epochs, "early_stopping": False, **QUIET}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed run had: the same arithmetic, bit for bit
    try:
        resumed = model().train(checkpoint_dir=ck, resume=True, **train)
        straight = model().train(**train)
    finally:
        torch.set_num_threads(threads)
    assert list(resumed.history["epoch"]) == list(range(epochs))
    pd.testing.assert_frame_equal(resumed.history.iloc[:3], _history(state))
    pd.testing.assert_frame_equal(resumed.history, straight.history)
    for key, value in straight.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[key], value), key
    for a, b in zip(_outputs(resumed, adata), _outputs(straight, adata), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(torch.load(ck / "checkpoint.pt", weights_only=True)["history"]) == epochs


def test_resume_from_an_incompatible_checkpoint_is_refused(adata, data_file, tmp_path, capsys):
    ck = tmp_path / "CK"
    TRVAE(adata, condition_key="condition", **TINY).train(max_epochs=1, checkpoint_dir=ck, **QUIET)
    config = (ck / "config.json").read_text()
    other = TRVAE(adata, condition_key="condition", n_hidden=(8,), n_latent=4, n_mmd=8)
    with pytest.raises(ModelLoadError, match=r"cannot resume from .*checkpoint\.pt"):
        other.train(max_epochs=2, checkpoint_dir=ck, resume=True, **QUIET)
    assert (ck / "config.json").read_text() == config  # the checkpoint's config is kept

    argv = ["train", data_file, "--condition-key", "condition", "--out", tmp_path / "M"]
    argv += ["--checkpoint-dir", ck, "--resume", "--max-epochs", "2", "--quiet"]
    argv += ["--n-hidden", "8", "--n-latent", "4", "--n-mmd", "8"]
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    assert err.startswith("trvae: error: cannot resume from") and "Traceback" not in err

    marker = tmp_path / "pwned"
    for content in (b"torn", Payload(marker)):
        if isinstance(content, bytes):
            (ck / "checkpoint.pt").write_bytes(content)
        else:
            torch.save(content, ck / "checkpoint.pt")
        with pytest.raises(ModelLoadError, match=r"cannot resume from .*checkpoint\.pt"):
            TRVAE(adata, condition_key="condition", **TINY).train(
                max_epochs=2, checkpoint_dir=ck, resume=True, **QUIET
            )
    assert not marker.exists()
