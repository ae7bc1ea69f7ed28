"""Compare two benchmark runs row by row (before and after a change).

    python -m seqserve.bench.compare bench-before.json bench-after.json [--markdown]

Rows are matched by (scenario, figure); a scenario label that carries a count
(scenario 5's sessions) is matched by its number alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from seqserve.bench.report import fmt_num, fmt_ratio


def _key(row: dict[str, Any]) -> tuple[str, str]:
    scenario = str(row["scenario"])
    if scenario.startswith("5 "):
        scenario = "5"
    return scenario, str(row["figure"])


def _rows(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    doc = json.loads(path.read_text())
    return {_key(r): r for r in doc["rows"]}


def compare(before: Path, after: Path, markdown: bool = False) -> str:
    a, b = _rows(before), _rows(after)
    lines = []
    if markdown:
        lines += ["| scenario | figure | before | after | change | ratio before | ratio after |",
                  "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for key, new in b.items():
        old = a.get(key)
        if old is None:
            continue
        change = new["value"] / old["value"] if old["value"] else None
        cells = [
            key[0] if key[0] != "5" else str(new["scenario"]),
            key[1],
            f"{fmt_num(old['value'])} {old['unit']}".strip(),
            f"{fmt_num(new['value'])} {new['unit']}".strip(),
            fmt_ratio(change),
            fmt_ratio(old["ratio"]) if old["ratio"] is not None else "",
            fmt_ratio(new["ratio"]) if new["ratio"] is not None else "",
        ]
        lines.append("| " + " | ".join(cells) + " |" if markdown else "  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m seqserve.bench.compare", description=__doc__)
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    print(compare(args.before, args.after, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
