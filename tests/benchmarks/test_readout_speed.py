"""``trvae bench readout`` on a tiny size: the table's shape, not the timings."""

from __future__ import annotations

import numpy as np

from trvae.cli import main
from trvae_benchmarks.readout_speed import VARIANTS


def test_quick_readout_table(capsys):
    argv = ["bench", "readout", "--quick", "--genes", "40", "60", "--cells-per-group", "15"]
    assert main([*argv, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "predict seconds (fastest of 1, 1 CPU threads)" in out
    lines = out.split("CPU threads)")[1].strip().splitlines()
    assert lines[0].split() == ["genes", "cells", "predict", "seconds", "peak_mb"]
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 2 * len(VARIANTS)
    assert [r[0] for r in rows] == ["40"] * len(VARIANTS) + ["60"] * len(VARIANTS)
    assert {r[1] for r in rows} == {"15"}  # type0's control cells
    assert [r[2] for r in rows[: len(VARIANTS)]] == list(VARIANTS)
    seconds = np.array([float(r[3]) for r in rows])
    assert np.isfinite(seconds).all() and (seconds > 0).all()
    peaks = np.array([float(r[4]) for r in rows])  # MiB; a rise, so at least 0 (Linux here)
    assert np.isfinite(peaks).all() and (peaks >= 0).all()


def test_groups_rows(capsys):
    argv = ["bench", "readout", "--quick", "--genes", "40", "--cells-per-group", "15", "--groups"]
    assert main([*argv, "--threads", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[-2:]]
    # every type's control cells: 5 types x 15; the two calls' values are checked equal
    assert [r[:2] for r in rows] == [["40", "75"]] * 2
    assert [r[2] for r in rows] == ['group_key="cell_type"', "each"]
    assert all(float(r[-2]) > 0 for r in rows)
