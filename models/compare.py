"""RNN vs GRU vs LSTM at the same hidden size: size, cost per step, error.

Two measurements, each with a bounded budget (minutes on two CPU cores):

1. The real series (weekly CO2): one-step-ahead test MAE of each cell trained
   the same way, against the naive baseline.
2. The adding problem at a lag where a plain RNN fails: test MSE after the same
   number of optimizer steps. Predicting the mean scores 1/6 ~ 0.167; a
   network that carries the marked numbers across the lag scores near 0.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm import tqdm

from seqserve.models.data import adding_problem
from seqserve.models.networks import CELLS, Forecaster
from seqserve.models.train import TrainConfig, train

MEAN_PREDICTOR_MSE = 1.0 / 6.0  # variance of the sum of two U(0, 1) numbers
SOLVED_MSE = 0.01


@dataclass(frozen=True)
class CompareConfig:
    hidden_size: int = 32
    series_epochs: int = TrainConfig.max_epochs  # as the bundled models
    adding_length: int = 100
    adding_steps: int = 3000
    adding_batch: int = 64
    adding_lr: float = 3e-3
    adding_test: int = 2000
    seed: int = 0


def adding_run(cell: str, config: CompareConfig, *, progress: bool) -> dict[str, Any]:
    """Train one cell on the adding problem; return its test MSE and learning curve."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    net = Forecaster(cell, 2, config.hidden_size, 1, 1)
    opt = torch.optim.Adam(net.parameters(), lr=config.adding_lr)
    x_test, y_test = adding_problem(config.adding_test, config.adding_length, seed=config.seed + 1)
    curve: list[tuple[int, float]] = []
    started = time.perf_counter()

    def test_mse() -> float:
        net.eval()
        with torch.no_grad():
            y, _ = net(x_test)  # (N, T, 1)
        net.train()
        return float(((y[:, -1] - y_test) ** 2).mean())

    bar = tqdm(
        range(config.adding_steps),
        desc=f"adding T={config.adding_length} {cell}",
        disable=not progress,
    )
    for step in bar:
        x, y_true = adding_problem(config.adding_batch, config.adding_length, generator=gen)
        y, _ = net(x)  # (B, T, 1); the answer is read at the last step
        loss = ((y[:, -1] - y_true) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if (step + 1) % 250 == 0 or step + 1 == config.adding_steps:
            curve.append((step + 1, test_mse()))
            bar.set_postfix(test_mse=f"{curve[-1][1]:.4f}")
    mse = curve[-1][1]
    return {
        "cell": cell,
        "test_mse": mse,
        "solved": mse < SOLVED_MSE,
        "curve": curve,
        "seconds": round(time.perf_counter() - started, 1),
    }


def series_run(cell: str, config: CompareConfig, *, progress: bool) -> dict[str, Any]:
    result = train(
        TrainConfig(
            cell=cell,
            hidden_size=config.hidden_size,
            max_epochs=config.series_epochs,
            seed=config.seed,
        ),
        progress=progress,
    )
    m = result.metrics
    keys = ("parameters", "macs_per_step", "test_mae", "test_rmse", "naive_mae", "seconds")
    return {"cell": cell, **{k: m[k] for k in keys}, "best_epoch": m["best_epoch"]}


def markdown(series: list[dict[str, Any]], adding: list[dict[str, Any]], c: CompareConfig) -> str:
    by_cell = {a["cell"]: a for a in adding}
    naive = series[0]["naive_mae"]
    lines = [
        f"| cell | parameters | multiply-adds / step | CO2 test MAE (ppm; naive {naive:.3f}) "
        f"| adding problem T={c.adding_length}: test MSE "
        f"(mean predictor {MEAN_PREDICTOR_MSE:.3f}) |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in series:
        a = by_cell[s["cell"]]
        verdict = "solved" if a["solved"] else "fails"
        lines.append(
            f"| {s['cell'].upper()} | {s['parameters']:,} | {s['macs_per_step']:,} "
            f"| {s['test_mae']:.3f} | {a['test_mse']:.4f} ({verdict}) |"
        )
    lines.append("")
    lines.append(
        f"Hidden size {c.hidden_size}, one layer, seed {c.seed}. CO2: weekly Mauna Loa, "
        "one-step-ahead, test = last 15% of the weeks. Adding problem: "
        f"{c.adding_steps} Adam steps of batch {c.adding_batch}, "
        f"'solved' = test MSE < {SOLVED_MSE}."
    )
    return "\n".join(lines) + "\n"


def run_comparison(config: CompareConfig, *, progress: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest (see TrainConfig.threads)
    try:
        series = [series_run(cell, config, progress=progress) for cell in CELLS]
        adding = [adding_run(cell, config, progress=progress) for cell in CELLS]
    finally:
        torch.set_num_threads(threads)
    return {
        "config": asdict(config),
        "series": series,
        "adding": adding,
        "seconds": round(time.perf_counter() - started, 1),
        "markdown": markdown(series, adding, config),
    }
