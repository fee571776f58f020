"""Before and after in the same run: the benches of two commits, taken in turns, side by side.

Run: `python bench/compare.py BEFORE [--after REV] [--rounds N] [--bench bench_smtp.py ...]`.
Each commit is checked out in a worktree of its own and runs its own bench scripts against its
own daemon (`PYTHONPATH` = its `bench` and `daemon`), in turns (before, after, after, before,
...) so that the machine's drift falls on both alike. The table gives each figure's median
over the rounds and after/before; "better" follows the bench's target (`<=`: lower is
better, `>=`: higher; a row without a target says nothing). `BENCH_SCALE` applies to both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from run import json_rows, machine

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BENCHES = ("bench_smtp.py", "bench_scale.py")
BETTER = {"<=": "lower", ">=": "higher"}


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def run_bench(tree: Path, script: str) -> list[dict[str, Any]]:
    """The JSON rows one bench script of `tree` prints; the rest goes to stderr."""
    bench = tree / "bench"
    result = subprocess.run(
        [sys.executable, script], cwd=bench, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": f"{bench}{os.pathsep}{tree / 'daemon'}"})
    if result.returncode != 0:
        raise SystemExit(f"{tree.name}: {script} exited with {result.returncode}")
    return json_rows(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the commit to compare against")
    parser.add_argument("--after", default="HEAD", help="the commit measured (default HEAD)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--bench", action="append", help="bench script(s); default "
                        + ", ".join(DEFAULT_BENCHES))
    args = parser.parse_args()
    scripts = args.bench or list(DEFAULT_BENCHES)
    commits = {"before": git("rev-parse", "--short", args.before),
               "after": git("rev-parse", "--short", args.after)}
    values: dict[str, dict[str, list[float]]] = {}
    better: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="supportd-compare-") as tmp:
        trees = {side: Path(tmp) / side for side in commits}
        if (REPO.parent / "shared").is_dir():  # the corpora, where bench_corpora.py looks
            (Path(tmp) / "shared").symlink_to(REPO.parent / "shared")
        for side, commit in commits.items():
            git("worktree", "add", "--detach", str(trees[side]), commit)
        try:
            for round_ in range(args.rounds):
                order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
                for script in scripts:
                    for side in order:
                        print(f"round {round_ + 1}: {side} ({commits[side]}) {script} ...",
                              file=sys.stderr, flush=True)
                        for row in run_bench(trees[side], script):
                            values.setdefault(row["bench"], {}).setdefault(
                                side, []).append(row["value"])
                            better[row["bench"]] = BETTER.get((row["target"] or "")[:2], "")
        finally:
            for tree in trees.values():
                git("worktree", "remove", "--force", str(tree))
    print(f"\nsupportd bench, before {commits['before']} / after {commits['after']}, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}, "
          f"BENCH_SCALE={os.environ.get('BENCH_SCALE', '1')}, median of {args.rounds}\n")
    print("| bench | before | after | after/before | better is | runs before | runs after |")
    print("|---|---:|---:|---:|---|---|---|")
    for bench, sides in values.items():
        before, after = (statistics.median(sides.get(s, [0.0])) for s in ("before", "after"))
        ratio = after / before if before else float("nan")
        print(f"| {bench} | {before:g} | {after:g} | {ratio:.2f} | "
              f"{better[bench]} | "
              f"{', '.join(f'{v:g}' for v in sides.get('before', []))} | "
              f"{', '.join(f'{v:g}' for v in sides.get('after', []))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
