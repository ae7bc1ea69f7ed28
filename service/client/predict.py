"""`seqserve predict`: stream a CSV through a running server, write the predictions.

The chosen columns (one per model input) are read row by row as one session's
steps and sent in chunks over the StepStream call. The output CSV repeats the
input rows and adds the model's output after each row: for an autoregressive
model, its prediction of the next row. `--plot` draws prediction against
actual (matplotlib, imported only then).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from seqserve.client import Client, ModelInfo, SeqServeClientError
from seqserve.client._common import F32
from seqserve.client.options import add_connection_arguments, client_of
from seqserve.hints import install

DEFAULT_CHUNK = 256
ZOOM_ROWS = 200  # the plot's second panel shows the last rows up close


class PredictError(Exception):
    """A CSV or option that cannot be used; printed as is, exit code 2."""


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    columns: list[str]  # the model's inputs, in order
    values: F32  # (N, F)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--version", default=None, help="model version (default: the latest)")
    parser.add_argument("--csv", required=True, type=Path, help="input CSV with a header row")
    parser.add_argument(
        "--column",
        action="append",
        default=None,
        help="input column, once per model input, in order (default: the numeric columns, "
        "less a numeric first column such as a time index when that leaves one per input)",
    )
    add_connection_arguments(parser)
    parser.add_argument("--out", default="-", help="output CSV (default: standard output)")
    parser.add_argument(
        "--plot", type=Path, default=None, help="PNG of prediction vs actual (default: no plot)"
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=DEFAULT_CHUNK,
        help="rows per stream message (T) (default: %(default)s)",
    )


def read_table(path: Path, columns: Sequence[str] | None, input_size: int) -> Table:
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
    except OSError as exc:
        raise PredictError(f"cannot read {path}: {exc}") from None
    while rows and not rows[-1]:  # blank lines at the end of the file: nothing follows them
        rows.pop()
    blank = [r + 2 for r, row in enumerate(rows) if not row]  # line numbers, header = line 1
    if blank:
        # A blank line inside a series is a missing step: dropping it would shift every
        # later step by one and answer for the wrong times.
        raise PredictError(
            f"{path} line {blank[0]}: expected a data row, got a blank line "
            f"({len(blank)} blank line(s) inside the data; fill or remove them first)"
        )
    if header is None or not rows:
        raise PredictError(f"{path}: expected a header row and at least one data row")
    if columns is None:
        columns = [name for i, name in enumerate(header) if _is_number(rows[0][i : i + 1])]
        if len(columns) == input_size + 1 and columns[0] == header[0]:
            columns = columns[1:]  # a numeric first column (time, index) is not an input
    missing = [c for c in columns if c not in header]
    if missing:
        raise PredictError(f"{path}: no column {missing}; the columns are {header}")
    if len(columns) != input_size:
        raise PredictError(
            f"the model takes {input_size} input(s) per step, got {len(columns)} column(s) "
            f"{list(columns)}; choose them with --column"
        )
    index = [header.index(c) for c in columns]
    values = np.empty((len(rows), len(index)), dtype=np.float32)  # (N, F)
    for r, row in enumerate(rows):
        for j, i in enumerate(index):
            cell = row[i] if i < len(row) else ""
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise PredictError(
                    f"{path} row {r + 2}, column {header[i]!r}: expected a finite number, "
                    f"got {cell!r} (fill or drop missing values first)"
                )
            values[r, j] = value
    return Table(header, rows, list(columns), values)


def _is_number(cells: list[str]) -> bool:
    try:
        return bool(cells) and math.isfinite(float(cells[0]))
    except ValueError:
        return False


def predict(client: Client, model: ModelInfo, values: F32, chunk: int) -> F32:
    """Stream values (N, F) through a fresh session; returns outputs (N, O)."""
    chunk = max(1, min(chunk, model.max_steps_per_request))
    chunks = [values[i : i + chunk] for i in range(0, len(values), chunk)]  # (T, F) each
    with client.session(model.name, model.version) as session:
        outputs = list(session.stream(_progress(chunks, len(values))))  # (T, O) each
    return np.concatenate(outputs)  # (N, O)


def _progress(chunks: list[F32], total: int) -> Iterator[F32]:
    sent, shown = 0, 0.0
    for c in chunks:
        yield c
        sent += len(c)
        if total >= 10_000 and sent / total - shown >= 0.1:
            shown = sent / total
            print(f"streamed {sent}/{total} rows", file=sys.stderr)


def write_csv(out: TextIO, table: Table, outputs: F32) -> None:
    names = (
        ["prediction"]
        if outputs.shape[1] == 1
        else [f"prediction_{j}" for j in range(outputs.shape[1])]
    )
    writer = csv.writer(out)
    writer.writerow([*table.header, *names])
    for row, y in zip(table.rows, outputs, strict=True):
        writer.writerow([*row, *(f"{v:.6g}" for v in y)])


def one_step_errors(values: F32, outputs: F32) -> tuple[float, float]:
    """(model MAE, last-value MAE) of predicting row t+1 from rows up to t."""
    predicted = outputs[:-1]  # (N-1, O): made after row t, for row t+1
    actual = values[1:]  # (N-1, F) with F == O
    persistence = values[:-1]
    return float(np.mean(np.abs(predicted - actual))), float(np.mean(np.abs(persistence - actual)))


def plot(path: Path, table: Table, outputs: F32, model: ModelInfo) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PredictError(
            f"--plot needs matplotlib: {install('plot')} (or pip install matplotlib)"
        ) from None
    n = len(table.values)
    rows = np.arange(n)
    # An autoregressive model's output after row t predicts row t + 1.
    shift = 1 if model.autoregressive else 0
    fig, axes = plt.subplots(2, 1, figsize=(11, 7), constrained_layout=True)
    zoom = max(0, n - ZOOM_ROWS)
    for ax, start in ((axes[0], 0), (axes[1], zoom)):
        ax.plot(rows[start:], table.values[start:, 0], color="black", lw=1.2, label="actual")
        ax.plot(
            rows[start:] + shift,
            outputs[start:, 0],
            color="tab:orange",
            lw=1.0,
            label="prediction (next step)" if shift else "model output",
        )
        if table.header[0] in table.columns:
            ax.set_xlabel("row")
        else:  # label the axis with the first column (dates, times), not row numbers
            ticks = np.unique(np.linspace(start, n - 1, 6).astype(int))
            ax.set_xticks(ticks, [table.rows[i][0] for i in ticks])
            ax.set_xlabel(table.header[0])
        ax.set_ylabel(table.columns[0])
        ax.grid(alpha=0.3)
    title = f"{model.name} v{model.version} ({model.cell}) on {table.columns[0]}"
    if model.autoregressive and n > 1:
        mae, naive = one_step_errors(table.values, outputs)
        title += f"\none-step MAE {mae:.4g} (last-value baseline {naive:.4g})"
    axes[0].set_title(title)
    axes[0].legend(loc="upper left")
    axes[1].set_title(f"the last {n - zoom} rows")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    try:
        with client_of(args) as client:
            model = client.model_info(args.model, args.version)
            table = read_table(args.csv, args.column, model.input_size)
            outputs = predict(client, model, table.values, args.chunk)
        if args.out == "-":
            write_csv(sys.stdout, table, outputs)
        else:
            with open(args.out, "w", newline="") as f:
                write_csv(f, table, outputs)
        summary = (
            f"predicted {len(outputs)} rows from column(s) {table.columns} "
            f"with {model.name} v{model.version}"
        )
        if model.autoregressive and len(outputs) > 1:
            mae, naive = one_step_errors(table.values, outputs)
            summary += f"; one-step MAE {mae:.4g} (last-value baseline {naive:.4g})"
        if args.out != "-":
            summary += f"; wrote {args.out}"
        if args.plot is not None:
            plot(args.plot, table, outputs, model)
            summary += f" and {args.plot}"
        print(summary, file=sys.stderr)
    except PredictError as exc:
        print(f"seqserve predict: {exc}", file=sys.stderr)
        return 2
    except SeqServeClientError as exc:
        print(f"seqserve predict: {args.target}: {exc}", file=sys.stderr)
        return 1
    return 0
