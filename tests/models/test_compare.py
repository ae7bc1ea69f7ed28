"""The comparison script's report, on a tiny budget (the real run is outside CI)."""

from __future__ import annotations

from seqserve.models.compare import SOLVED_MSE, CompareConfig, run_comparison
from seqserve.models.networks import Forecaster


def test_report_has_one_row_per_cell_with_its_size_and_verdict() -> None:
    config = CompareConfig(hidden_size=4, series_epochs=1, adding_length=12, adding_steps=3)
    report = run_comparison(config, progress=False)
    rows = [
        line
        for line in report["markdown"].splitlines()
        if line.startswith("| ") and "|-" not in line
    ]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["RNN", "GRU", "LSTM"]
    for row, series, adding in zip(rows[1:], report["series"], report["adding"], strict=True):
        net = Forecaster(series["cell"], 1, 4)
        assert series["parameters"] == net.parameter_count()
        assert f"{net.parameter_count():,}" in row
        verdict = "solved" if adding["test_mse"] < SOLVED_MSE else "fails"
        assert row.rstrip(" |").endswith(f"({verdict})")
