"""Train a one-step-ahead forecaster on a series; write checkpoint, metrics and plots.

Training samples random windows from the training split (zero initial state,
the first `burn_in` steps of each window not scored while the state warms up).
Validation, test and the reported train loss all stream the whole series
through the model from its start, as a serving session would, and score the
observed targets of each split. Early stopping watches the validation loss and
keeps the best weights.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from seqserve.models import checkpoint
from seqserve.models.data import (
    Series,
    Splits,
    WindowDataset,
    baselines,
    fit_normalization,
    load_co2,
    multi_sine,
    split_at_times,
    split_by_time,
    target_steps,
)
from seqserve.models.networks import Forecaster, ServingModule

DATASETS = ("co2", "sine", "csv")


@dataclass(frozen=True)
class TrainConfig:
    data: str = "co2"
    cell: str = "lstm"
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    residual: bool = True  # predict the change from the current value
    window: int = 156  # steps per training window (3 years of weeks)
    burn_in: int = 26  # leading steps of a window left unscored
    batch_size: int = 32
    batches_per_epoch: int = 20
    max_epochs: int = 150
    patience: int = 15  # epochs without a better validation loss before stopping
    lr: float = 3e-3
    grad_clip: float = 1.0
    # Augmentation: shift each window by a random level, up to this many input stds,
    # so the network learns that the next change does not depend on the level.
    level_shift: float = 4.0
    seed: int = 0
    sine_steps: int = 2000  # length of the synthetic series when data == "sine"
    # data == "csv": the file, its columns (empty: every numeric column; targets empty:
    # the features, an autoregressive model) and its time column (empty: row order).
    csv: str = ""
    features: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    time_column: str = ""
    # Splits by time: the last fractions of the series, or where validation and test
    # begin (times of the series, e.g. dates) when given.
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_times: tuple[str, ...] = ()
    # Intra-op threads. These models are tiny: one thread is fastest, and two
    # spin-waiting threads on a busy 2-core machine were ~8x slower.
    threads: int = 1

    def validate(self) -> None:
        if self.data not in DATASETS:
            raise ValueError(f"unknown data {self.data!r}: expected one of {', '.join(DATASETS)}")
        if not 0 <= self.burn_in < self.window:
            raise ValueError(f"expected 0 <= burn_in < window, got {self.burn_in}, {self.window}")
        for name in ("batch_size", "batches_per_epoch", "max_epochs", "patience", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (self.data == "csv") != bool(self.csv):
            raise ValueError("expected --csv FILE with data csv (and only then)")
        if self.split_times and len(self.split_times) != 2:
            raise ValueError(
                f"expected two split times (validation start, test start), got {self.split_times}"
            )


@dataclass
class TrainResult:
    module: ServingModule
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)
    predictions: np.ndarray | None = None  # (N, O) raw one-step forecasts; row 0 is NaN


def load_series(config: TrainConfig) -> Series:
    if config.data == "co2":
        return load_co2()
    if config.data == "csv":
        from seqserve.models.csvdata import load_csv

        return load_csv(Path(config.csv), config.features, config.targets, config.time_column)
    return multi_sine(n=config.sine_steps, seed=config.seed)


def splits_for(config: TrainConfig, series: Series) -> Splits:
    """Splits by time: at the configured times, or the configured last fractions."""
    if config.split_times:
        times = series.times
        at = [np.asarray(t).astype(times.dtype) if times.dtype.kind == "M" else float(t)
              for t in config.split_times]  # fmt: skip
        return split_at_times(times, at[0], at[1])
    return split_by_time(len(series), config.val_fraction, config.test_fraction)


def stream(module: ServingModule, series: Series) -> np.ndarray:
    """One-step forecasts over the whole series from a zero state: row t forecasts step t.

    Returns (N, O) raw values; row 0 is NaN (nothing precedes step 0).
    """
    x = torch.from_numpy(series.values[:-1]).unsqueeze(0)  # (1, N-1, F)
    with torch.no_grad():
        y, _ = module(x)  # (1, N-1, O)
    out = np.full((len(series), y.shape[-1]), np.nan, dtype=np.float64)
    out[1:] = y[0].double().numpy()
    return out


def split_metrics(
    module: ServingModule, series: Series, splits: Splits, predictions: np.ndarray
) -> dict[str, float]:
    """Loss (MSE in network units), MAE and RMSE (raw units) per split, observed targets only."""
    values = series.target_values.astype(np.float64)  # (N, O)
    metrics: dict[str, float] = {}
    for name, (start, end) in splits.ranges().items():
        steps = target_steps(series, start, end)
        err = predictions[steps] - values[steps]  # (S, O) raw
        # The network's units: the error divided by the target scale (residual or not,
        # the scale is the same; the residual's offset cancels in the difference).
        scale = module.normalization.target_std.double().numpy()
        metrics[f"{name}_loss"] = float(((err / scale) ** 2).mean())
        metrics[f"{name}_mae"] = float(np.abs(err).mean())
        metrics[f"{name}_rmse"] = float(np.sqrt((err**2).mean()))
    return metrics


def _batch_loss(
    module: ServingModule, batch: tuple[Tensor, Tensor, Tensor], burn_in: int
) -> Tensor:
    x, y, mask = batch  # (B, W, F), (B, W, O), (B, W)
    pred, _ = module.forecaster(module.normalization.normalize_input(x))  # (B, W, O)
    target = module.target_in_network_units(x, y)  # (B, W, O)
    weight = mask[:, burn_in:].unsqueeze(-1).float()  # (B, W - burn_in, 1)
    sq = (pred[:, burn_in:] - target[:, burn_in:]) ** 2 * weight
    loss: Tensor = sq.sum() / (weight.sum() * pred.shape[-1]).clamp(min=1.0)
    return loss


def _dates(series: Series, splits: Splits) -> dict[str, list[str]]:
    return {
        name: [str(series.times[start]), str(series.times[end - 1])]
        for name, (start, end) in splits.ranges().items()
    }


def train(config: TrainConfig, *, progress: bool = True, command: str | None = None) -> TrainResult:
    """Fit a forecaster per `config`; returns the best module (eval mode) and its metrics."""
    config.validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, progress=progress, command=command)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, *, progress: bool, command: str | None) -> TrainResult:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    series = load_series(config)
    splits = splits_for(config, series)
    # The residual form adds the input to the output: only where they are the same series.
    residual = config.residual and series.autoregressive
    norm = fit_normalization(series, splits, residual=residual)
    f, o = series.num_features, series.num_targets
    forecaster = Forecaster(
        config.cell, f, config.hidden_size, config.num_layers, o, dropout=config.dropout
    )
    module = ServingModule(forecaster, norm, residual=residual)
    windows = WindowDataset(series, 0, splits.train_end, config.window)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=4)
    input_std = norm.input_std  # (F,)

    history: dict[str, list[float]] = {"train_batch_loss": [], "val_loss": []}
    best_val, best_epoch, best_state = float("inf"), -1, copy.deepcopy(module.state_dict())
    bar = tqdm(range(config.max_epochs), desc=f"{config.cell} {config.data}", disable=not progress)
    for epoch in bar:
        module.train()
        losses = []
        for _ in range(config.batches_per_epoch):
            idx = torch.randint(0, len(windows), (config.batch_size,), generator=gen)
            x, y, mask = (torch.stack(t) for t in zip(*(windows[int(i)] for i in idx), strict=True))
            if config.level_shift > 0 and series.autoregressive:  # one shift for x and y
                shift = (torch.rand(x.shape[0], 1, f, generator=gen) * 2 - 1) * input_std
                x, y = x + config.level_shift * shift, y + config.level_shift * shift
            loss = _batch_loss(module, (x, y, mask), config.burn_in)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
        module.eval()
        val_loss = split_metrics(module, series, splits, stream(module, series))["val_loss"]
        scheduler.step(val_loss)
        history["train_batch_loss"].append(float(np.mean(losses)))
        history["val_loss"].append(val_loss)
        if val_loss < best_val:
            best_val, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(module.state_dict())
        bar.set_postfix(train=f"{np.mean(losses):.4f}", val=f"{val_loss:.4f}", best=best_epoch)
        if epoch - best_epoch >= config.patience:
            break

    module.load_state_dict(best_state)
    module.eval()
    predictions = stream(module, series)
    metrics: dict[str, Any] = split_metrics(module, series, splits, predictions)
    base = baselines(series, splits.val_end, splits.n)
    best_name, best_mae = base.best()
    metrics.update(
        naive_mae=base.naive_mae,
        seasonal_naive_mae=base.seasonal_naive_mae,
        baseline=best_name,
        baseline_mae=best_mae,
        beats_baseline=bool(metrics["test_mae"] < best_mae),
        epochs=len(history["val_loss"]),
        best_epoch=best_epoch + 1,
        seconds=round(time.perf_counter() - started, 1),
        parameters=forecaster.parameter_count(),
        macs_per_step=forecaster.macs_per_step(),
    )
    provenance = {
        "data": {"name": series.name, **series.notes},
        "splits": _dates(series, splits),
        "split_steps": splits.ranges(),
        "autoregressive": series.autoregressive,
        "residual": residual,
        "config": asdict(config),
        "metrics": metrics,
        "torch": str(torch.__version__),
        "command": command,
    }
    return TrainResult(module, metrics, provenance, history, predictions)


def save_outputs(result: TrainResult, out_dir: Path, *, plots: bool = True) -> dict[str, Path]:
    """checkpoint.pt, metrics.json and (optionally) loss.png, forecast.png in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "checkpoint": out_dir / checkpoint.CHECKPOINT_FILE,
        "metrics": out_dir / "metrics.json",
    }
    autoregressive = bool(result.provenance.get("autoregressive", True))
    checkpoint.save(
        paths["checkpoint"],
        result.module,
        autoregressive=autoregressive,
        provenance=result.provenance,
    )
    paths["metrics"].write_text(json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")
    if plots:
        from seqserve.models import plots as plotting

        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in result.provenance["config"].items()
        }
        config = TrainConfig(**fields)
        series = load_series(config)
        paths["loss_plot"] = plotting.loss_curves(result.history, out_dir / "loss.png")
        assert result.predictions is not None
        paths["forecast_plot"] = plotting.forecast_vs_actual(
            series,
            splits_for(config, series),
            result.predictions,
            result.metrics,
            out_dir / "forecast.png",
        )
    return paths
