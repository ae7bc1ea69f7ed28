"""The real series, the splits, the windows, the baselines and the synthetic tasks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from statsmodels.datasets import co2

from seqserve.models.data import (
    Series,
    WindowDataset,
    adding_problem,
    baselines,
    fit_normalization,
    load_co2,
    multi_sine,
    split_by_time,
)


@pytest.fixture(scope="module")
def series() -> Series:
    return load_co2()


def test_co2_has_the_documented_shape_and_no_nans(series: Series) -> None:
    raw = co2.load_pandas().data["co2"].to_numpy()
    assert series.values.shape == (raw.shape[0], 1)
    assert series.values.dtype == np.float32
    assert np.isfinite(series.values).all()
    assert series.times.shape == (raw.shape[0],)
    assert (np.diff(series.times) == np.timedelta64(7, "D")).all()  # weekly, no skipped rows


def test_co2_marks_exactly_the_missing_weeks(series: Series) -> None:
    raw = co2.load_pandas().data["co2"].to_numpy()
    assert (series.observed == np.isfinite(raw)).all()
    assert (~series.observed).sum() == series.notes["missing"] > 0
    obs = series.observed
    assert np.allclose(series.values[obs, 0], raw[obs], atol=1e-4)  # observed weeks untouched


def test_co2_gaps_are_filled_between_their_neighbours(series: Series) -> None:
    v, obs = series.values[:, 0], series.observed
    for i in np.flatnonzero(~obs):
        before = v[: i + 1][obs[: i + 1]][-1]  # last observed value before the gap
        after = v[i:][obs[i:]][0]  # first observed value after it
        assert min(before, after) - 1e-4 <= v[i] <= max(before, after) + 1e-4


def test_splits_are_ordered_disjoint_and_cover_the_series(series: Series) -> None:
    splits = split_by_time(len(series))
    ranges = list(splits.ranges().values())
    covered = np.concatenate([np.arange(a, b) for a, b in ranges])
    assert (covered == np.arange(len(series))).all()  # disjoint, in time order, no gaps
    assert all(a < b for a, b in ranges)
    # The dates of each split come strictly after the previous one's.
    assert series.times[ranges[0][1] - 1] < series.times[ranges[1][0]]
    assert series.times[ranges[1][1] - 1] < series.times[ranges[2][0]]


def test_training_windows_stay_inside_their_split(series: Series) -> None:
    splits = split_by_time(len(series))
    windows = WindowDataset(series, 0, splits.train_end, window=50, stride=7)
    values = torch.from_numpy(series.values)
    for i in range(len(windows)):
        x, y, mask = windows[i]
        s = windows.starts[i]
        assert s + 50 < splits.train_end  # the last target is still a training step
        assert torch.equal(x[1:], y[:-1])  # the target is the next step
        assert torch.equal(y, values[s + 1 : s + 51])
        assert torch.equal(mask, torch.from_numpy(series.observed[s + 1 : s + 51]))


def test_normalisation_uses_the_training_part_only(series: Series) -> None:
    splits = split_by_time(len(series))
    norm = fit_normalization(series, splits, residual=False)
    train = series.values[: splits.train_end, 0][series.observed[: splits.train_end]]
    assert norm.input_mean.item() == pytest.approx(train.astype(np.float64).mean(), rel=1e-6)
    assert norm.input_std.item() == pytest.approx(train.astype(np.float64).std(), rel=1e-6)
    # Changing everything after the training part changes nothing.
    later = series.values.copy()
    later[splits.train_end :] += 100.0
    norm_later = fit_normalization(dataclasses.replace(series, values=later), splits, residual=True)
    norm_again = fit_normalization(series, splits, residual=True)
    assert norm_later.to_dict() == norm_again.to_dict()


def test_baselines_score_observed_targets_only() -> None:
    values = np.array([0.0, 1.0, 3.0, 6.0, 10.0, 9.0], dtype=np.float32)[:, None]
    observed = np.array([True, True, True, False, True, True])
    s = Series("t", values, observed, np.arange(6), season=2)
    b = baselines(s, 0, 6)
    # Targets 1, 2, 4, 5 (3 is missing): naive errors 1, 2, 4, 1.
    assert b.naive_mae == pytest.approx(2.0)
    # Seasonal naive (lag 2) on targets 2, 4, 5: errors 3, 7, 3.
    assert b.seasonal_naive_mae == pytest.approx(13.0 / 3.0)
    assert b.best() == ("naive", pytest.approx(2.0))


def test_multi_sine_is_reproducible() -> None:
    a, b, c = multi_sine(300, seed=1), multi_sine(300, seed=1), multi_sine(300, seed=2)
    assert a.values.shape == (300, 1) and a.observed.all()
    assert np.array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)


def test_adding_problem_targets_are_the_sums_of_the_marked_numbers() -> None:
    x, y = adding_problem(500, 60, seed=3)
    assert x.shape == (500, 60, 2) and y.shape == (500, 1)
    marks = x[..., 1]
    assert torch.equal(marks.sum(dim=1), torch.full((500,), 2.0))
    first = marks.argmax(dim=1)  # the earliest mark
    last = 59 - marks.flip(1).argmax(dim=1)
    assert (first < 6).all() and (last >= 30).all()
    assert torch.allclose((x[..., 0] * marks).sum(dim=1, keepdim=True), y)
    # Predicting the mean of the target scores about 1/6.
    assert float(((y - 1.0) ** 2).mean()) == pytest.approx(1 / 6, abs=0.03)
