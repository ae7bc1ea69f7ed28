"""A user's own series from a CSV file: feature columns in, target columns forecast.

- Features: the columns the model reads each step (default: every numeric
  column but the time column). Targets: the columns it forecasts one step
  ahead (default: the features, so the model is autoregressive and can roll
  itself forward with Forecast).
- Time column (optional): parsed as dates when it looks like dates, else as
  numbers; rows are sorted by it, a repeated time is an error, and a series
  sampled on a regular grid with missing times (gaps) gets the missing rows
  back, filled. A grid that is not regular (steps that are not whole
  multiples of the usual one) is an error: a recurrent model counts steps.
- Missing values (an empty cell, NaN, a gap's row) are handled as the CO2
  loader does: inputs are filled by linear interpolation, and a step whose
  targets were missing is never scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seqserve.models.data import Series, _fill_gaps, _gap_lengths


class CsvError(ValueError):
    """A CSV that cannot be trained on; the message names the file and what is wrong."""


def _columns(frame: Any, wanted: tuple[str, ...], what: str, path: Path) -> list[str]:
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise CsvError(f"{path}: no {what} column {missing}; the columns are {list(frame.columns)}")
    return list(wanted)


def _times(raw: Any, path: Path, name: str) -> np.ndarray:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(raw):
        return np.asarray(raw.to_numpy(dtype=np.float64))
    try:
        return np.asarray(pd.to_datetime(raw).to_numpy(dtype="datetime64[ns]"))
    except (ValueError, TypeError) as exc:
        raise CsvError(
            f"{path}: time column {name!r}: expected numbers or dates, got {exc}"
        ) from None


def _regular(times: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """The grid the rows lie on and each row's place in it; gaps become missing rows."""
    dates = times.dtype.kind == "M"
    ticks = times.astype(np.int64).astype(np.float64) if dates else times.astype(np.float64)
    diffs = np.diff(ticks)
    if (diffs <= 0).any():
        at = int(np.flatnonzero(diffs <= 0)[0]) + 1
        raise CsvError(f"{path}: time {times[at]} appears more than once")
    step = float(np.median(diffs))
    multiples = diffs / step
    whole = np.rint(multiples)
    off = np.abs(multiples - whole) > 1e-6
    if off.any():
        at = int(np.flatnonzero(off)[0]) + 1
        raise CsvError(
            f"{path}: expected times on a regular grid (the usual step is {times[1] - times[0]}"
            f"; gaps of whole steps are filled), got {times[at - 1]} then {times[at]}"
        )
    place = np.concatenate([[0], np.cumsum(whole.astype(np.int64))])  # (N,) grid index
    grid_ticks = ticks[0] + step * np.arange(place[-1] + 1)
    grid = grid_ticks.astype(np.int64).astype(times.dtype) if dates else grid_ticks
    return grid, place, int((whole > 1).sum())


def load_csv(
    path: Path,
    features: tuple[str, ...] = (),
    targets: tuple[str, ...] = (),
    time_column: str = "",
) -> Series:
    """A Series from a CSV with a header row: values (N, F), targets (N, O) or None."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, skip_blank_lines=False)
    except (OSError, ValueError) as exc:
        raise CsvError(f"cannot read {path}: {exc}") from None
    if frame.empty:
        raise CsvError(f"{path}: expected a header row and data rows, got none")
    if time_column:
        _columns(frame, (time_column,), "time", path)
        times = _times(frame[time_column], path, time_column)
        empty = np.isnat(times) if times.dtype.kind == "M" else np.isnan(times)
        if empty.any():
            raise CsvError(f"{path}: time column {time_column!r} has empty cells")
        order = np.argsort(times, kind="stable")
        frame, times = frame.iloc[order].reset_index(drop=True), times[order]
        was_sorted = bool((order == np.arange(len(order))).all())
    else:
        times, was_sorted = np.arange(len(frame), dtype=np.int64), True
    numeric = [
        c for c in frame.columns if c != time_column and pd.api.types.is_numeric_dtype(frame[c])
    ]
    inputs = _columns(frame, features, "feature", path) if features else numeric
    if not inputs:
        raise CsvError(f"{path}: no numeric column to use as a feature; name them with --features")
    outputs = _columns(frame, targets, "target", path) if targets else inputs
    for c in {*inputs, *outputs}:
        if not pd.api.types.is_numeric_dtype(frame[c]):
            bad = frame[c][pd.to_numeric(frame[c], errors="coerce").isna() & frame[c].notna()]
            raise CsvError(
                f"{path}: column {c!r}: expected numbers, got {bad.iloc[0]!r} at row "
                f"{int(bad.index[0]) + 2}"
            )
    x = frame[inputs].to_numpy(dtype=np.float64)  # (N, F), NaN where missing
    y = frame[outputs].to_numpy(dtype=np.float64)  # (N, O)
    rows = len(frame)
    inserted = time_gaps = 0
    if time_column and rows > 2:
        grid, place, time_gaps = _regular(times, path)
        inserted = len(grid) - rows
        if inserted:
            full_x = np.full((len(grid), x.shape[1]), np.nan)
            full_y = np.full((len(grid), y.shape[1]), np.nan)
            full_x[place], full_y[place] = x, y
            x, y, times = full_x, full_y, grid
    if len(x) < 20:
        raise CsvError(f"{path}: expected at least 20 steps to train and score on, got {len(x)}")
    filled_x = np.empty_like(x)
    for j in range(x.shape[1]):
        try:
            filled_x[:, j], _ = _fill_gaps(x[:, j])
        except ValueError:
            raise CsvError(f"{path}: feature {inputs[j]!r} has no values") from None
    observed = np.isfinite(y).all(axis=1)  # (N,) a step is scored only if all its targets are
    if not observed.any():
        raise CsvError(f"{path}: no row has every target {outputs}")
    filled_y = np.empty_like(y)
    for j in range(y.shape[1]):
        filled_y[:, j], _ = _fill_gaps(y[:, j])
    gaps = _gap_lengths(observed)
    autoregressive = outputs == inputs
    return Series(
        name=path.stem,
        values=filled_x.astype(np.float32),
        observed=observed,
        times=times,
        season=None,
        targets=None if autoregressive else filled_y.astype(np.float32),
        notes={
            "source": str(path),
            "features": inputs,
            "targets": outputs,
            "time_column": time_column or None,
            "steps": len(x),
            "rows": rows,
            "sorted_by_time": was_sorted,
            "inserted_for_gaps": int(inserted),
            "time_gaps": time_gaps,  # runs of missing times, each filled with rows
            "missing": int((~observed).sum()),
            "gaps": len(gaps),
            "longest_gap": max(gaps, default=0),
            "missing_values": "inputs: linear interpolation in time; targets: never scored",
        },
    )
