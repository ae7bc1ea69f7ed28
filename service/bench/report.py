"""The benchmark's results: rows of (figure, floor, ratio, target), printed and saved as JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SCHEMA = "seqserve.bench/v1"


@dataclass(frozen=True)
class Target:
    """A bound on a row's ratio (or, with `on_value`, on the figure itself)."""

    op: str  # "<=" or ">="
    bound: float
    on_value: bool = False  # compare the figure, not the ratio

    def holds(self, x: float) -> bool:
        return x <= self.bound if self.op == "<=" else x >= self.bound

    def describe(self) -> str:
        return f"{self.op} {fmt_num(self.bound) if self.on_value else fmt_ratio(self.bound)}"


@dataclass
class Row:
    scenario: str
    figure: str
    value: float
    unit: str
    floor: float | None = None
    floor_what: str = ""
    target: Target | None = None
    ratio: float | None = field(init=False)
    passed: bool | None = field(init=False)

    def __post_init__(self) -> None:
        ok_floor = self.floor is not None and self.floor > 0
        self.ratio = self.value / self.floor if ok_floor and self.floor else None
        if self.target is None:
            self.passed = None
        elif self.target.on_value:
            self.passed = self.target.holds(self.value)
        else:
            self.passed = self.ratio is not None and self.target.holds(self.ratio)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = self.target.describe() if self.target else None
        return d


def percentiles_us(latencies_ns: npt.NDArray[np.int64]) -> dict[str, float]:
    if latencies_ns.size == 0:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan, "n": 0}
    us = latencies_ns / 1e3
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(us.max()),
        "n": int(us.size),
    }


def fmt_num(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    ax = abs(x)
    if ax >= 100 or float(x).is_integer():
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def format_table(rows: list[Row]) -> str:
    header = ["scenario", "figure", "value", "unit", "floor", "floor is", "ratio", "target", ""]
    lines = [header]
    for r in rows:
        verdict = {True: "pass", False: "FAIL", None: ""}[r.passed]
        lines.append(
            [
                r.scenario,
                r.figure,
                fmt_num(r.value),
                r.unit,
                fmt_num(r.floor),
                r.floor_what,
                fmt_ratio(r.ratio) if r.ratio is not None else "",
                r.target.describe() if r.target else "",
                verdict,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {2, 4, 6}
    out = []
    for n, line in enumerate(lines):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_markdown(rows: list[Row]) -> str:
    out = [
        "| scenario | figure | value | floor | ratio | target | |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        verdict = {True: "pass", False: "**fail**", None: ""}[r.passed]
        floor = f"{fmt_num(r.floor)} ({r.floor_what})" if r.floor is not None else ""
        ratio = fmt_ratio(r.ratio) if r.ratio is not None else ""
        target = r.target.describe() if r.target else ""
        out.append(
            f"| {r.scenario} | {r.figure} | {fmt_num(r.value)} {r.unit} | {floor} | {ratio} "
            f"| {target} | {verdict} |"
        )
    return "\n".join(out)


def machine() -> dict[str, Any]:
    import grpc
    import onnxruntime

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "numpy": np.__version__,
    }


def write_json(path: Path, rows: list[Row], details: dict[str, Any], meta: dict[str, Any]) -> None:
    targets = [r for r in rows if r.passed is not None]
    doc = {
        "schema": SCHEMA,
        **meta,
        "machine": machine(),
        "summary": {"targets": len(targets), "met": sum(1 for r in targets if r.passed)},
        "rows": [r.to_dict() for r in rows],
        "details": details,
    }
    path.write_text(json.dumps(_finite(doc), indent=2, default=_jsonable, allow_nan=False) + "\n")


def _finite(x: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")
