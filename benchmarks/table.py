"""Generate the README's results table from ``benchmarks/results/*.json`` (never typed by hand).

    python benchmarks/table.py          # rewrite the table between the markers in README.md
    python benchmarks/table.py --check  # exit 1 when README.md is out of date
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def fmt_time(seconds: float | None) -> str:
    if not seconds:
        return "—"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def natural(name: str) -> list[int | str]:
    """Sort key that puts inst2 before inst10 and L20 before L100."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def table() -> str:
    rows = [json.loads(p.read_text()) for p in sorted((ROOT / "benchmarks" / "results").glob("*.json"))]
    rows.sort(key=lambda r: (r["method"], r["dataset"], r.get("shots", 0), r.get("ways", 0), r.get("config") or "",
                             r.get("values", {}).get("length", 0), natural(r["name"])))
    lines = ["| setting | metric | paper | seed code | ours (mean ± 95% CI) | test tasks | training time | machine | config |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = "—" if r.get("paper") is None else f"{r['paper']}"
        seed = "—" if r.get("seed_code") is None else f"{r['seed_code']}"
        digits = 3 if r["metric"] in ("mse", "bit_errors") else 2
        ours = f"**{r['mean']:.{digits}f} ± {r['ci95']:.{digits}f}**"
        metric = r["metric"].replace("_", " ")
        if r.get("attack"):
            metric += f" under {r['attack']['kind'].upper()} ε = {r['attack']['eps']:g}"
        lines.append(f"| {r['name']} | {metric} | {paper} | {seed} | {ours} | {r['tasks']} | "
                     f"{fmt_time(r.get('train_seconds'))} | {r.get('machine', '—')}, {r.get('precision', 'fp32')} | "
                     f"`{r.get('config', '—')}` |")
    return "\n".join(lines)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    new = f"{head}{START}\n{table()}\n{END}{tail}"
    if "--check" in sys.argv:
        if new != text:
            print("README.md results table is out of date: run python benchmarks/table.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
