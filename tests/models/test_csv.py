"""Your own series: a CSV read as the trainer reads it (sorted, gaps filled, missing targets
never scored), trained on, exported, served and streamed with `seqserve predict`."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from seqserve import cli
from seqserve.core.spec import load_spec
from seqserve.models import checkpoint
from seqserve.models.cli import main as models_main
from seqserve.models.csvdata import CsvError, load_csv
from tests.grpc.conftest import settings_for
from tests.grpc.harness import ServerThread

DAYS = 240


def meter(n: int = DAYS, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Dates, a temperature with a 30-day cycle, and a load that follows it a day late."""
    rng = np.random.default_rng(seed)
    days = np.arange(np.datetime64("2024-01-01"), np.datetime64("2024-01-01") + n)
    t = np.arange(n)
    temp = 10 + 8 * np.sin(2 * np.pi * t / 30) + rng.normal(0, 0.3, n)
    load = 50 + 2 * np.roll(temp, 1) + rng.normal(0, 0.3, n)
    return [str(d) for d in days], temp, load


def write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """Rows out of order, a missing load, and three days missing altogether."""
    days, temp, load = meter()
    rows = [[d, f"{a:.4f}", f"{b:.4f}"] for d, a, b in zip(days, temp, load, strict=True)]
    rows[50][2] = ""
    del rows[120:123]
    order = np.random.default_rng(1).permutation(len(rows))
    return write(tmp_path / "meter.csv", ["date", "temp", "load"], [rows[i] for i in order])


def test_a_csv_is_sorted_its_gaps_filled_and_missing_targets_never_scored(messy: Path) -> None:
    series = load_csv(messy, time_column="date")
    _, temp, _ = meter()
    assert len(series) == DAYS and series.notes["inserted_for_gaps"] == 3
    assert not series.notes["sorted_by_time"] and series.notes["features"] == ["temp", "load"]
    assert series.autoregressive and series.values.shape == (DAYS, 2)
    assert list(np.flatnonzero(~series.observed)) == [50, 120, 121, 122]
    np.testing.assert_allclose(series.values[:50, 0], temp[:50], atol=1e-4)
    # Filled inputs lie on the line between their neighbours.
    np.testing.assert_allclose(
        series.values[121], (series.values[119] + series.values[123]) / 2, atol=1e-4
    )
    apart = load_csv(messy, features=("temp",), targets=("load",), time_column="date")
    assert not apart.autoregressive and apart.target_values.shape == (DAYS, 1)
    assert list(np.flatnonzero(~apart.observed)) == [50, 120, 121, 122]


@pytest.mark.parametrize(
    ("rows", "kwargs", "says"),
    [
        ([["2024-01-01", "1"], ["2024-01-01", "2"]] * 11, {"time_column": "date"},
         "appears more than once"),
        ([[str(t), "1"] for t in [*range(10), *(10.5 + k for k in range(15))]],
         {"time_column": "date"}, "regular grid"),  # half a step off after 9
        ([[f"2024-01-{d:02d}", "1" if d != 7 else "high"] for d in range(1, 25)],
         {"time_column": "date", "features": ("x",)},
         "column 'x': expected numbers, got 'high' at row 8"),
        ([[f"2024-01-{d:02d}", "high"] for d in range(1, 25)], {"time_column": "date"},
         "no numeric column to use as a feature"),
        ([[f"2024-01-{d:02d}", "1"] for d in range(1, 25)], {"features": ("y",)},
         "no feature column ['y']"),
        ([[f"2024-01-{d:02d}", "1"] for d in range(1, 5)], {"time_column": "date"},
         "expected at least 20 steps"),
    ],
)  # fmt: skip
def test_unusable_csvs_are_refused_with_the_reason(
    tmp_path: Path, rows: list[list[str]], kwargs: dict[str, object], says: str
) -> None:
    path = write(tmp_path / "bad.csv", ["date", "x"], rows)
    with pytest.raises(CsvError, match=re.escape(says)):
        load_csv(path, **kwargs)  # type: ignore[arg-type]


def test_from_a_csv_to_a_served_model_to_seqserve_predict(
    messy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, run = tmp_path / "repository", tmp_path / "run"
    args = ["train", "--csv", str(messy), "--time-column", "date", "--targets", "load",
            "--features", "temp,load", "--cell", "gru", "--hidden", "8", "--window", "40",
            "--burn-in", "5", "--batch-size", "8", "--batches-per-epoch", "5", "--epochs", "3",
            "--quiet", "--no-plots", "--out", str(run), "--export", str(repo)]  # fmt: skip
    assert models_main(args) == 0
    out = capsys.readouterr().out
    assert "meter.csv: 240 steps" in out and "3 inserted for 1 gap(s)" in out
    spec = load_spec(repo / "meter-gru" / "1" / "model.json")
    assert (spec.input_size, spec.output_size, spec.autoregressive) == (2, 1, False)
    assert models_main(args) == 2  # the version exists: not replaced without --force
    assert "--force" in capsys.readouterr().err
    export = ["export", str(run), "--repository", str(repo), "--name", "meter-gru"]
    assert models_main(export) == 2 and "already holds a version" in capsys.readouterr().err
    assert models_main([*export, "--force"]) == 0
    # New readings, in order, streamed through the served model.
    days, temp, load = meter(60, seed=7)
    rows = [[d, f"{a:.4f}", f"{b:.4f}"] for d, a, b in zip(days, temp, load, strict=True)]
    fresh = write(tmp_path / "new.csv", ["date", "temp", "load"], rows)
    with ServerThread(settings_for(repo)) as server:
        predicted = tmp_path / "predicted.csv"
        argv = ["predict", "--target", server.target, "--model", "meter-gru", "--csv",
                str(fresh), "--out", str(predicted)]  # fmt: skip
        assert cli.main(argv) == 0
    with predicted.open() as f:
        table = list(csv.DictReader(f))
    got = np.array([float(r["prediction"]) for r in table], np.float32)  # (60,)
    module = checkpoint.read(run).module
    x = torch.from_numpy(np.stack([temp, load], axis=1).astype(np.float32))[None]  # (1, 60, 2)
    with torch.no_grad():
        want = module(x)[0][0, :, 0].numpy()  # (60,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
