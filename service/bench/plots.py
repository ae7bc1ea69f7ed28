"""PNG plots of a run: latency distributions per scenario, throughput against concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _ticker() -> Any:
    import matplotlib.ticker

    return matplotlib.ticker


def _plain_log_ticks(ax: Any) -> None:
    """Log axis labelled 200, 500, 1,000 ... rather than 2x10^2 (those collide)."""
    ticker = _ticker()
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _save(fig: Any, ax: Any, title: str, path: Path, legend_loc: str = "best") -> Path:
    """Title, legend, layout, write the PNG and free the figure."""
    ax.set_title(title)
    ax.legend(fontsize=8, loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def latency_plots(
    samples: dict[str, dict[str, npt.NDArray[np.int64]]], floor_us: float | None, out: Path
) -> list[Path]:
    """One PNG per scenario: the cumulative distribution of round-trip latency, log scale."""
    plt = _pyplot()
    paths = []
    for scenario, curves in samples.items():
        curves = {k: v for k, v in curves.items() if v.size}
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, ns in curves.items():
            us = np.sort(ns / 1e3)
            q = np.arange(1, us.size + 1) / us.size
            p50 = float(np.median(us))
            ax.plot(us, q, label=f"{label} (p50 {p50:,.0f} us, n={us.size:,})")
        if floor_us is not None and scenario.startswith("1"):
            ax.axvline(
                floor_us,
                color="grey",
                ls=":",
                label=f"floor: echo p50 + ORT B=1, {floor_us:,.0f} us",
            )
            ax.axvline(1.3 * floor_us, color="tab:red", ls=":", label="target: 1.3x floor")
        ax.set_xscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel("round trip per message (us, log scale)")
        ax.set_ylabel("fraction of messages")
        ax.set_ylim(0, 1.0)
        ax.grid(True, which="both", alpha=0.3)
        path = out / f"latency-{scenario.split()[0]}-{scenario.split()[-1]}.png"
        title = f"scenario {scenario}: latency distribution"
        paths.append(_save(fig, ax, title, path, legend_loc="lower right"))
    return paths


def throughput_plot(series: list[dict[str, Any]], out: Path) -> Path:
    """Scenario 2: steps/s of the server and messages/s of the echo floor, per concurrency."""
    plt = _pyplot()
    n = [s["streams"] for s in series]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    echo = [s["echo"]["per_s"] for s in series]
    ax.plot(n, echo, "o--", color="grey", label="echo floor (msgs/s)")
    ax.plot(n, [s["server"]["per_s"] for s in series], "o-", label="seqserve (steps/s)")
    if all("reference" in s for s in series):
        ax.plot(n, [s["reference"]["per_s"] for s in series], "s-", color="tab:green",
                label="inline reference (a model call per message, no batching)")  # fmt: skip
    ax.plot(n, [0.8 * e for e in echo], ":", color="tab:red", label="target 0.8x echo")
    ax.set_xscale("log")
    ax.set_xticks(n, [str(x) for x in n])
    ax.set_xlabel("concurrent sessions, one stream each")
    ax.set_ylabel("replies per second")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    return _save(
        fig, ax, "scenario 2: throughput against concurrency", out / "throughput-concurrency.png"
    )


def bulk_plot(series: list[dict[str, Any]], cells: list[dict[str, Any]], out: Path) -> Path:
    """Scenarios 3 and 6: session-steps/s of the batch path against ORT rows/s."""
    plt = _pyplot()
    labels, got, floor, echo = [], [], [], []
    for s in series:
        if "server" in s:
            labels.append(f"lstm B={s['batch']} x{s['inflight']}")
            got.append(s["server"]["items_per_s"])
            floor.append(s["ort_rows_per_s"])
            echo.append(s["echo"]["items_per_s"] if "echo" in s else np.nan)
    for c in cells:
        labels.append(f"{c['cell']} (scenario 6)")
        got.append(c["bulk_per_s"])
        floor.append(c["ort_rows_per_s"])
        echo.append(np.nan)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.bar(x - 0.2, floor, 0.4, color="lightgrey", label="ORT in-process rows/s (floor)")
    ax.bar(x + 0.2, got, 0.4, label="seqserve session-steps/s")
    ax.plot(x + 0.2, echo, "k_", ms=18, label="echo ceiling (transport)")
    ax.plot(
        x + 0.2, [0.5 * f for f in floor], "_", color="tab:red", ms=18, label="target: 0.5x ORT"
    )
    ax.yaxis.set_major_formatter(_ticker().FuncFormatter(lambda v, _: f"{v / 1e3:,.0f}k"))
    ax.set_xticks(x, labels, rotation=20, fontsize=8)
    ax.set_ylabel("session-steps per second")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(
        fig,
        ax,
        "scenarios 3 and 6: batch path against the model floor",
        out / "throughput-bulk.png",
    )


def memory_plot(curve: list[tuple[int, int]], raw_bytes: int, out: Path) -> Path:
    """Scenario 5: server RSS against sessions open, with the raw-state line."""
    plt = _pyplot()
    n = np.array([c[0] for c in curve], float)
    rss = np.array([c[1] for c in curve], float) / 2**20
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(n, rss, ".-", label="server RSS")
    ax.plot(n, rss[0] + n * raw_bytes / 2**20, "--", color="grey", label="start + raw state")
    allowed = (1.5 * raw_bytes + 250) / 2**20
    ax.plot(n, rss[0] + n * allowed, ":", color="tab:red", label="target: 1.5x raw + 250 B")
    ax.set_xlabel("idle sessions open")
    ax.set_ylabel("resident memory (MiB)")
    ax.grid(True, alpha=0.3)
    return _save(fig, ax, "scenario 5: memory against sessions", out / "memory-sessions.png")
