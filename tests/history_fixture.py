"""A synthetic history of saved runs for `reports history`: 30 commits x 3 runs made from a real run, with
realistic noise and known injected steps.

Every cell of tests/data/run-training-small.json (read_many, read_random with batch sizes, workers and cold
caches, and the floor cells they are divided by) keeps its measured median; each run multiplies it by a factor
shared by the whole run (the machine being faster or slower: sigma 2 %), by the cell's own drift between runs
(sigma 3 %, the read cells' 1-3.5 % of docs/ci.md's A/A check, rounded up), and for 2 % of the cell-runs by an
outlying 1.1-1.4x; each of its 10 rounds adds 5 % lognormal noise. Commits are numbered 1 to 30; STEPS multiply
a cell's time from the given commit on. `python -m tests.history_fixture DIR [--aa] [--seed N]` writes one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from reports.compare_output import label
from reports.results import load_run

BASE = Path(__file__).parent / "data" / "run-training-small.json"
COMMITS, RUNS, ROUNDS = 30, 3, 10
MACHINE_SIGMA, DRIFT_SIGMA, ROUND_SIGMA = 0.02, 0.03, 0.05
OUTLIER_RATE, OUTLIER_RANGE = 0.02, (1.1, 1.4)
STEPS = {  # cell label -> (first commit with the change, numbered from 1; factor on its time)
    "read_many lmdb n=500 32x32x3": (12, 1.10),
    "read_many hdf5 n=100 32x32x3": (12, 1.10),
    "read_random hdf5 n=500 32x32x3 b32-w1-warm": (12, 1.10),
    "read_random lmdb n=500 32x32x3 b32-w2-warm": (21, 1 / 1.20),
}
START = datetime(2026, 11, 1, tzinfo=timezone.utc)


def commit_id(number: int, seed: int) -> str:
    return hashlib.sha1(f"history-fixture {seed} {number}".encode()).hexdigest()


def _stats(data: np.ndarray) -> dict:
    q1, q3 = np.percentile(data, [25, 75])
    return {
        "median": float(np.median(data)),
        "min": float(data.min()),
        "max": float(data.max()),
        "mean": float(data.mean()),
        "stddev": float(data.std(ddof=1)),
        "q1": float(q1),
        "q3": float(q3),
        "iqr": float(q3 - q1),
        "rounds": int(data.size),
        "iterations": 1,
        "data": data.tolist(),
    }


def write_history(
    directory: Path, *, seed: int = 0, steps: dict[str, tuple[int, float]] | None = None, commits: int = COMMITS
) -> list[Path]:
    """Write commits x RUNS run files into ``directory`` (steps=None: STEPS; {}: an A/A history); their paths."""
    steps = STEPS if steps is None else steps
    document = json.loads(BASE.read_text(encoding="utf-8"))
    labels = [label(cell.key) for cell in load_run(BASE).cells]
    suite = [
        bench for bench in document["benchmarks"] if (bench.get("extra_info") or {}).get("suite") == "image-storage"
    ]
    assert len(suite) == len(labels) and set(steps) <= set(labels), "the base run no longer has the stepped cells"
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(1, commits + 1):
        committed = START + timedelta(hours=number)
        for replicate in range(RUNS):
            machine = rng.lognormal(0.0, MACHINE_SIGMA)
            benchmarks = []
            for bench, name in zip(suite, labels):
                first, factor = steps.get(name, (commits + 1, 1.0))
                outlier = rng.uniform(*OUTLIER_RANGE) if rng.random() < OUTLIER_RATE else 1.0
                centre = bench["stats"]["median"] * machine * rng.lognormal(0.0, DRIFT_SIGMA) * outlier
                centre *= factor if number >= first else 1.0
                benchmarks.append({**bench, "stats": _stats(centre * rng.lognormal(0.0, ROUND_SIGMA, ROUNDS))})
            run = {
                **document,
                "benchmarks": benchmarks,
                "commit_info": {
                    **document["commit_info"],
                    "id": commit_id(number, seed),
                    "dirty": False,
                    "time": committed.isoformat(),
                },
                "datetime": (committed + timedelta(minutes=10 * (replicate + 1))).isoformat(),
            }
            path = directory / f"{number:04d}-{replicate}_{commit_id(number, seed)[:8]}.json"
            path.write_text(json.dumps(run), encoding="utf-8")
            paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.history_fixture", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--aa", action="store_true", help="no injected steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_history(args.out, seed=args.seed, steps={} if args.aa else None)
    print(f"wrote {len(paths)} runs into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
