"""PNG plots of a training run: loss curves and forecast vs actual."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np

from seqserve.models.data import Series, Splits


def loss_curves(history: dict[str, list[float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = np.arange(1, len(history["val_loss"]) + 1)
    ax.plot(epochs, history["train_batch_loss"], label="train (random windows)")
    ax.plot(epochs, history["val_loss"], label="validation (streamed)")
    best = int(np.argmin(history["val_loss"])) + 1
    ax.axvline(best, color="grey", linestyle=":", label=f"best epoch {best}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (normalised units)")
    ax.set_title("Loss curves")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def forecast_vs_actual(
    series: Series,
    splits: Splits,
    predictions: np.ndarray,
    metrics: dict[str, Any],
    path: Path,
) -> Path:
    """Top: the whole series with the splits shaded. Bottom: the test part, one-step
    forecasts against observed values (filled weeks are not drawn as observations)."""
    times = series.times
    actual = series.target_values[:, 0].astype(np.float64)
    obs = series.observed
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7))
    top.plot(times, actual, lw=0.8, color="black", label="series (gaps filled)")
    colours = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
    for name, (start, end) in splits.ranges().items():
        top.axvspan(times[start], times[end - 1], alpha=0.12, color=colours[name], label=name)
    top.set_title(f"{series.name}: splits by time")
    top.legend(loc="upper left")

    start, end = splits.val_end, splits.n
    t = times[start:end]
    bottom.plot(
        t[obs[start:end]],
        actual[start:end][obs[start:end]],
        ".",
        ms=3,
        color="black",
        label="observed",
    )
    bottom.plot(t, predictions[start:end, 0], lw=1.0, color="tab:red", label="one-step forecast")
    bottom.set_title(
        f"test: MAE {metrics['test_mae']:.3f} vs naive {metrics['naive_mae']:.3f}"
        + (
            f", seasonal naive {metrics['seasonal_naive_mae']:.3f}"
            if metrics.get("seasonal_naive_mae") is not None
            else ""
        )
    )
    bottom.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def adding_curves(adding: list[dict[str, Any]], mean_mse: float, path: Path) -> Path:
    """Test MSE against optimizer steps on the adding problem, one line per cell."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in adding:
        steps, mse = zip(*run["curve"], strict=True)
        ax.plot(steps, mse, marker="o", ms=3, label=run["cell"].upper())
    ax.axhline(mean_mse, color="grey", linestyle=":", label="predict the mean (1/6)")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("test MSE")
    ax.set_title("Adding problem: who carries a value across the lag")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
