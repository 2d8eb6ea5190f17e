"""Tables from metrics CSVs: per component, sede and operation.

``python -m app.report DIR [DIR...]`` reads every ``*.csv`` below the folders
(one run, possibly from several hosts), and prints for each group the count,
outcomes, mean and standard deviation, p50/p95/p99 of ``latency_ms`` and the
throughput over the group's own time span, with an aggregated row per component.
Percentiles are computed from the merged raw rows, never averaged across files.
"""

from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import statistics
import sys
from collections import defaultdict
from typing import Iterable

OK_STATUSES = {"ok", "granted", "applied", "accepted"}
REFUSED_STATUSES = {"refused", "invalid"}
COMPONENT_ORDER = ("ps", "actor", "ga")


def read_rows(folders: Iterable[str]) -> list[dict[str, str]]:
    rows = []
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "**", "*.csv"), recursive=True)):
            with open(path, newline="", encoding="utf-8") as handle:
                rows.extend(r for r in csv.DictReader(handle) if r.get("latency_ms"))
    return rows


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(rows: list[dict[str, str]]) -> dict[str, float]:
    latencies = sorted(float(r["latency_ms"]) for r in rows)
    stamps = [float(r["ts"]) for r in rows]
    span = max(stamps) - min(stamps) if len(stamps) > 1 else 0.0
    statuses = [r["status"] for r in rows]
    return {
        "count": len(rows),
        "ok": sum(s in OK_STATUSES for s in statuses),
        "refused": sum(s in REFUSED_STATUSES for s in statuses),
        "repeat": sum(s == "repeat" for s in statuses),
        "errors": sum(s == "failed" for s in statuses),
        "mean_ms": statistics.fmean(latencies) if latencies else math.nan,
        "std_ms": statistics.pstdev(latencies) if len(latencies) > 1 else 0.0,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "per_s": len(rows) / span if span > 0 else math.nan,
    }


HEADER = ("component", "sede", "op", "count", "ok", "refused", "repeat", "errors", "mean_ms",
          "std_ms", "p50_ms", "p95_ms", "p99_ms", "per_s")


def table(rows: list[dict[str, str]]) -> list[tuple]:
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        groups[(row["component"], row["sede"], row["op"])].append(row)
    lines = []
    for component in sorted({k[0] for k in groups}, key=lambda c: (
            COMPONENT_ORDER.index(c) if c in COMPONENT_ORDER else 9, c)):
        keys = sorted(k for k in groups if k[0] == component)
        for key in keys:
            lines.append((*key, *summarize(groups[key]).values()))
        every = [r for k in keys for r in groups[k]]
        lines.append((component, "all", "all", *summarize(every).values()))
    return lines


def render(lines: list[tuple]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.2f}"
        return str(value)

    cells = [HEADER] + [tuple(cell(v) for v in line) for line in lines]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    out = []
    for n, row in enumerate(cells):
        out.append("  ".join(c.rjust(w) if i > 2 else c.ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+")
    args = p.parse_args(argv)
    rows = read_rows(args.folders)
    if not rows:
        print(f"no metrics rows under {', '.join(args.folders)}")
        return 1
    print(render(table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
