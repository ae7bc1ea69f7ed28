"""Series to learn from, time splits, training windows and baselines.

Real data: the weekly Mauna Loa CO2 record (ppm, March 1958 - December 2001)
that statsmodels ships (`statsmodels.datasets.co2`). 59 of its 2284 weeks are
missing, in 22 gaps of 1 to 18 weeks. They are handled like this:

- inputs: gaps are filled by linear interpolation in time, which is what a
  client streaming the series would have to send for a missing week;
- targets: filled weeks are never scored. Every loss, error and baseline here
  is computed over observed weeks only (the `observed` mask), so no metric
  rewards predicting an interpolated line.

Splits are by time (train, then validation, then test; no shuffling across
them). Normalisation statistics come from the training part only. A
one-step-ahead forecast at step t sees the series up to t (earlier splits
included, as a streaming client would) and is scored against step t + 1.

Synthetic data: a noisy multi-sine series (tests, quick runs) and the adding
problem (Hochreiter & Schmidhuber 1997), the long-lag task where a plain RNN
fails and gated cells succeed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from seqserve.models.networks import Normalization

WEEKS_PER_YEAR = 52  # seasonal-naive lag for the weekly CO2 series


@dataclass(frozen=True)
class Series:
    """A regularly sampled series with gaps filled and the filled steps marked."""

    name: str
    values: np.ndarray  # (N, F) float32, gaps filled
    observed: np.ndarray  # (N,) bool, False where a value was filled in
    times: np.ndarray  # (N,) datetime64 or step numbers
    season: int | None  # period in steps, for the seasonal-naive baseline
    notes: dict[str, Any] = field(default_factory=dict)
    # (N, O) float32 what is forecast, gaps filled, when it is not the inputs themselves;
    # None: the next step of the inputs (an autoregressive model, O == F).
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.values.shape[1])

    @property
    def target_values(self) -> np.ndarray:
        """(N, O): the targets, or the inputs when the model forecasts its own next input."""
        return self.values if self.targets is None else self.targets

    @property
    def num_targets(self) -> int:
        return int(self.target_values.shape[1])

    @property
    def autoregressive(self) -> bool:
        return self.targets is None


@dataclass(frozen=True)
class Splits:
    """Half-open index ranges by time: train [0, train_end), val [train_end, val_end),
    test [val_end, n). A range holds the *target* steps scored in that split."""

    train_end: int
    val_end: int
    n: int

    def ranges(self) -> dict[str, tuple[int, int]]:
        return {
            "train": (0, self.train_end),
            "val": (self.train_end, self.val_end),
            "test": (self.val_end, self.n),
        }


def _fill_gaps(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation over NaNs (edges: nearest value); returns (filled, observed)."""
    observed = np.isfinite(raw)
    if not observed.any():
        raise ValueError("series has no observed values")
    idx = np.arange(raw.shape[0])
    filled = np.interp(idx, idx[observed], raw[observed])
    return filled, observed


def _gap_lengths(observed: np.ndarray) -> list[int]:
    lengths, run = [], 0
    for ok in observed:
        if ok:
            if run:
                lengths.append(run)
            run = 0
        else:
            run += 1
    if run:
        lengths.append(run)
    return lengths


def load_co2() -> Series:
    """Weekly Mauna Loa CO2 (ppm), 1958-03-29 to 2001-12-29: 2284 weeks, F = 1."""
    from statsmodels.datasets import co2

    frame = co2.load_pandas().data
    raw = frame["co2"].to_numpy(dtype=np.float64)  # (N,)
    filled, observed = _fill_gaps(raw)
    gaps = _gap_lengths(observed)
    return Series(
        name="co2",
        values=filled.astype(np.float32)[:, None],  # (N, 1)
        observed=observed,
        times=frame.index.to_numpy().astype("datetime64[D]"),
        season=WEEKS_PER_YEAR,
        notes={
            "source": "statsmodels.datasets.co2 (Mauna Loa weekly CO2, ppm)",
            "steps": int(raw.shape[0]),
            "missing": int((~observed).sum()),
            "gaps": len(gaps),
            "longest_gap": max(gaps, default=0),
            "missing_values": "inputs: linear interpolation in time; targets: never scored",
        },
    )


def multi_sine(
    n: int = 2000,
    periods: tuple[float, ...] = (25.0, 60.0),
    noise: float = 0.1,
    seed: int = 0,
) -> Series:
    """Sum of sines with random phases plus Gaussian noise, F = 1, no gaps."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    clean = sum(np.sin(2 * np.pi * t / p + rng.uniform(0, 2 * np.pi)) for p in periods)
    values = clean + noise * rng.standard_normal(n)
    return Series(
        name="sine",
        values=values.astype(np.float32)[:, None],  # (N, 1)
        observed=np.ones(n, dtype=bool),
        times=t.astype(np.int64),
        season=round(max(periods)),
        notes={"periods": list(periods), "noise": noise, "seed": seed},
    )


def split_at_times(times: np.ndarray, val_start: Any, test_start: Any) -> Splits:
    """Splits where validation and test begin, given as times of the series."""
    if not val_start < test_start:
        raise ValueError(f"expected the validation start before the test start, got "
                         f"{val_start} and {test_start}")  # fmt: skip
    train_end = int(np.searchsorted(times, val_start))
    val_end = int(np.searchsorted(times, test_start))
    n = len(times)
    if not 1 < train_end < val_end < n:
        raise ValueError(
            f"expected both split times inside the series ({times[0]} to {times[-1]}) with "
            f"steps in every split, got {val_start} and {test_start}"
        )
    return Splits(train_end=train_end, val_end=val_end, n=n)


def split_by_time(n: int, val_fraction: float = 0.15, test_fraction: float = 0.15) -> Splits:
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"expected fractions in (0, 1) summing below 1, got {val_fraction}, {test_fraction}"
        )
    val_end = n - round(n * test_fraction)
    train_end = val_end - round(n * val_fraction)
    if not 1 < train_end < val_end < n:
        raise ValueError(f"series of {n} steps is too short to split")
    return Splits(train_end=train_end, val_end=val_end, n=n)


def fit_normalization(series: Series, splits: Splits, *, residual: bool) -> Normalization:
    """Input and target statistics from the training part only.

    With `residual`, the network predicts the change to the next step, so the
    target statistics are those of one-step differences.
    """
    train = series.values[: splits.train_end].astype(np.float64)  # (N_train, F)
    obs = series.observed[: splits.train_end]
    x_mean, x_std = train[obs].mean(axis=0), _scale(train[obs].std(axis=0))
    if residual:
        if not series.autoregressive:
            raise ValueError("residual adds the input to the output: expected targets == inputs")
        both = obs[1:] & obs[:-1]  # differences between two observed weeks only
        diff = (train[1:] - train[:-1])[both]  # (M, F)
        y_mean, y_std = diff.mean(axis=0), _scale(diff.std(axis=0))
    elif series.autoregressive:
        y_mean, y_std = x_mean, x_std
    else:
        targets = series.target_values[: splits.train_end].astype(np.float64)[obs]  # (M, O)
        y_mean, y_std = targets.mean(axis=0), _scale(targets.std(axis=0))
    return Normalization(x_mean.tolist(), x_std.tolist(), y_mean.tolist(), y_std.tolist())


def _scale(std: np.ndarray) -> np.ndarray:
    """A standard deviation usable as a divisor: a constant column gets 1."""
    return np.where(std > 1e-12, std, 1.0)


class WindowDataset(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """Windows for one-step-ahead training: x = values[s : s + W], y = values[s + 1 : s + W + 1].

    Windows start every `stride` steps and lie wholly inside [start, end), so
    their targets never leave the split. `mask` marks observed targets.
    """

    def __init__(self, series: Series, start: int, end: int, window: int, stride: int = 1) -> None:
        if end - start < window + 1:
            raise ValueError(f"split [{start}, {end}) is shorter than window + 1 = {window + 1}")
        self.values = torch.from_numpy(series.values)  # (N, F)
        self.targets = torch.from_numpy(series.target_values)  # (N, O)
        self.observed = torch.from_numpy(series.observed)  # (N,)
        self.window = window
        self.starts = list(range(start, end - window, stride))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        s = self.starts[i]
        w = self.window
        x = self.values[s : s + w]  # (W, F)
        y = self.targets[s + 1 : s + w + 1]  # (W, O)
        mask = self.observed[s + 1 : s + w + 1]  # (W,)
        return x, y, mask


@dataclass(frozen=True)
class Baselines:
    naive_mae: float  # predict the last value
    seasonal_naive_mae: float | None  # predict the value one season ago

    def best(self) -> tuple[str, float]:
        if self.seasonal_naive_mae is not None and self.seasonal_naive_mae < self.naive_mae:
            return "seasonal_naive", self.seasonal_naive_mae
        return "naive", self.naive_mae


def target_steps(series: Series, start: int, end: int) -> np.ndarray:
    """Observed target steps in [start, end), excluding step 0 (nothing precedes it)."""
    steps = np.arange(max(start, 1), end)
    keep: np.ndarray = steps[series.observed[steps]]
    return keep


def baselines(series: Series, start: int, end: int) -> Baselines:
    """Baseline MAE over the observed targets in [start, end), averaged over features."""
    steps = target_steps(series, start, end)
    v = series.target_values.astype(np.float64)  # (N, O)
    naive = float(np.abs(v[steps] - v[steps - 1]).mean())
    seasonal = None
    if series.season is not None:
        s = steps[steps >= series.season]
        seasonal = float(np.abs(v[s] - v[s - series.season]).mean())
    return Baselines(naive_mae=naive, seasonal_naive_mae=seasonal)


def adding_problem(
    n: int, length: int, seed: int = 0, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The adding problem: x (N, T, 2), y (N, 1).

    Channel 0 holds uniform [0, 1) numbers; channel 1 marks two of them with 1.
    The target is the sum of the two marked numbers. The first mark falls in
    the first tenth of the sequence and the second in the second half, so the
    network must carry a value across at least T * 0.4 steps. Predicting the
    mean (1.0) gives MSE 1/6; solving the task gives MSE near 0.
    """
    if length < 10:
        raise ValueError(f"length must be >= 10, got {length}")
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    numbers = torch.rand(n, length, generator=g)  # (N, T)
    first = torch.randint(0, max(1, length // 10), (n,), generator=g)
    second = torch.randint(length // 2, length, (n,), generator=g)
    marks = torch.zeros(n, length)
    rows = torch.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    x = torch.stack([numbers, marks], dim=-1)  # (N, T, 2)
    y = (numbers[rows, first] + numbers[rows, second]).unsqueeze(-1)  # (N, 1)
    return x, y
