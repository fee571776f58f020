"""Run every bench/bench_*.py and print one table of ratios measured in this run.

A bench prints one JSON object per line on stdout: bench, what, value, baseline,
baseline_is, ratio, target (a string like ">= 1.0" or null), optionally note; anything else
it prints (profiles, progress) goes to stderr. `BENCH_SCALE` (default 1) scales every count.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def json_rows(stdout: str) -> list[dict[str, Any]]:
    """A bench's JSON rows (one object a line); any other line it printed goes to stderr."""
    rows = []
    for line in stdout.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(line, file=sys.stderr)
    return rows


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def met(ratio: float, target: str | None) -> str:
    if not target:
        return ""
    op, _, bound = target.partition(" ")
    ok = ratio >= float(bound) if op == ">=" else ratio <= float(bound)
    return "yes" if ok else "NO"


def main() -> int:
    rows, failures = [], []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"running {script.name} ...", file=sys.stderr, flush=True)
        result = subprocess.run([sys.executable, script.name], cwd=HERE, stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(HERE)})
        rows += json_rows(result.stdout)
        if result.returncode != 0:
            failures.append(f"{script.name} exited with {result.returncode}")
    print(f"\nsupportd bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}, "
          f"BENCH_SCALE={os.environ.get('BENCH_SCALE', '1')}\n")
    print("| bench | what | value | baseline | ratio | target | met |")
    print("|---|---|---:|---:|---:|---|---|")
    for r in rows:
        what = f"{r['what']} ({r['note']})" if r.get("note") else r["what"]
        print(f"| {r['bench']} | {what} | {r['value']} | {r['baseline']} "
              f"({r['baseline_is']}) | {r['ratio']} | {r['target'] or ''} | "
              f"{met(r['ratio'], r['target'])} |")
    for failure in failures:
        print(f"\n{failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
