"""Floor rounds interleaved with a cell's rounds, so that a cell is judged against its floor timed at the same moments.

A floor cell runs before the cells it bounds, and a shared machine drifts between moments: timed minutes apart, a
floor and a cell of equal work differed by 2-20x here under load (docs/ci.md, "Floor flags"). So every floor cell
leaves its round (the untimed setup and the timed target it gave ``measure``) in a session registry, and each later
cell that its floor includes runs one round of each of its floors in the untimed setup of its own rounds (one in
``every`` of them, at most INTERLEAVED_MAX), timing them. The flag (reports.floors) compares the cell with these
interleaved floor rounds, recorded in ``extra_info.floor_interleaved``, and round by round: each cell round over the
floor round just before it (``ratio_q1``, ``ratio_median``, ``ratio_q3``), which cancels what drifts between rounds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

INTERLEAVED_MAX = 30  # floor rounds interleaved with one cell's rounds at most
REGISTRY_KEY = pytest.StashKey[dict]()  # floor cell (name, images, batch) -> (target, setup) of its rounds
Round = tuple[Callable[..., Any], Callable[[], tuple[tuple, dict]]]


def register(
    config: pytest.Config, key: tuple, target: Callable[..., Any], setup: Callable[[], tuple[tuple, dict]]
) -> None:
    """Keep a floor cell's round for the cells timed after it (its inputs must stay valid until the session ends)."""
    config.stash.setdefault(REGISTRY_KEY, {})[key] = (target, setup)


def rounds_of(config: pytest.Config, keys: Sequence[tuple]) -> list[Round] | None:
    """The registered rounds of the floor cells ``keys``, or None unless every one of them ran."""
    registry = config.stash.get(REGISTRY_KEY, {})
    return [registry[key] for key in keys] if keys and all(key in registry for key in keys) else None


class Interleaved:
    """Runs a round of each floor, timed, before one in ``every`` of a cell's rounds (in their untimed setup)."""

    def __init__(self, floors: list[Round], rounds: int) -> None:
        self.floors, self.every = floors, max(1, math.ceil(rounds / INTERLEAVED_MAX))
        self.seconds: list[float] = []
        self.calls = 0

    def wrap(self, setup: Callable[[], Any]) -> Callable[[], Any]:
        def floor_then_setup() -> Any:
            if self.calls % self.every == 0:
                total = 0.0
                for target, floor_setup in self.floors:
                    args, kwargs = floor_setup()
                    start = time.perf_counter()
                    target(*args, **kwargs)
                    total += time.perf_counter() - start
                self.seconds.append(total)
            self.calls += 1
            return setup()

        return floor_then_setup

    def stats(self, cell_rounds: Sequence[float]) -> dict[str, float | int]:
        """The interleaved floor rounds (seconds of the floors' sum per round) as extra_info.floor_interleaved, with
        the quartiles of the paired ratios: each cell round over the floor round run just before it."""
        data = np.array(self.seconds)
        q1, median, q3 = np.percentile(data, [25, 50, 75])
        paired = np.array(cell_rounds[:: self.every][: len(data)]) / data[: len(cell_rounds[:: self.every])]
        ratio_q1, ratio_median, ratio_q3 = np.percentile(paired, [25, 50, 75])
        return {
            "median": float(median),
            "q1": float(q1),
            "q3": float(q3),
            "min": float(data.min()),
            "max": float(data.max()),
            "rounds": len(data),
            "ratio_q1": float(ratio_q1),
            "ratio_median": float(ratio_median),
            "ratio_q3": float(ratio_q3),
        }
