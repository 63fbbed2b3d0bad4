"""Signs of life on the terminal, past pytest's capture: long setup steps, the rounds of long cells, and an
estimate of the time the rest of the suite will take."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

ANNOUNCE_MIN_IMAGES = 10_000  # announce setup steps from this many images on
LONG_CELL_S = 5.0  # a cell whose rounds are expected to take longer than this reports its rounds
ROUND_EVERY_S = 5.0  # at most one round line per this many seconds
ESTIMATE_AFTER_CELLS = 3  # the first estimate of the remaining time comes after this many cells
ESTIMATE_EVERY_S = 60.0  # then at most one per this many seconds


def say(config: pytest.Config, text: str, newline: bool = True) -> None:
    """Write to the terminal even while pytest captures output (nothing without a terminal reporter)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    with config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        reporter.ensure_newline()
        if newline:
            reporter.write_line(text)
        else:
            reporter.write(text, flush=True)


@contextlib.contextmanager
def announce(config: pytest.Config, what: str, count: int) -> Iterator[None]:
    """Say what a long setup step does and how long it took (steps under ANNOUNCE_MIN_IMAGES stay quiet)."""
    if count < ANNOUNCE_MIN_IMAGES:
        yield
        return
    say(config, f"image-storage: {what} ... ", newline=False)
    start = time.perf_counter()
    yield
    say(config, f"{time.perf_counter() - start:.1f} s")


def rounds_reporter(
    config: pytest.Config, name: str, rounds: int, round_s: float, setup: Callable[[], Any]
) -> Callable[[], Any]:
    """``setup`` that also reports "round k of n" before each round (untimed) when the rounds will take long."""
    if rounds * round_s <= LONG_CELL_S:
        return setup
    start = time.perf_counter()
    state = {"round": 0, "said": -math.inf}

    def setup_and_report() -> Any:
        state["round"] += 1
        now = time.perf_counter()
        if now - state["said"] >= ROUND_EVERY_S:
            done = state["round"] - 1
            left = (now - start) / done * (rounds - done) if done else rounds * round_s
            say(
                config,
                f"image-storage: {name}: round {state['round']} of {rounds}, {now - start:.0f} s elapsed, "
                f"about {left:.0f} s left",
            )
            state["said"] = now
        return setup()

    return setup_and_report


class SuiteClock:
    """Estimates the time the remaining cells take from the cells done so far.

    A cell is known by its test function, method (or floor) and other parameters, and its image count. A cell
    whose kind already ran at a larger count than one image is predicted from the largest such count, scaled per
    image: its rounds (as many as fill --benchmark-max-time, within the suite's minimum and maximum) and the rest
    of its wall time (setup, check, teardown). Any other cell is predicted as the mean of the cells done so far at
    the same image count (or of all cells done so far), but at least --benchmark-max-time.
    """

    def __init__(self, items: Sequence[pytest.Item], max_time: float, min_rounds: int, max_rounds: int) -> None:
        self.pending = {item.nodeid: _kind(item) for item in items}
        self.max_time, self.min_rounds, self.max_rounds = max_time, min_rounds, max_rounds
        self.done: dict[tuple, tuple[int, float, float, int]] = {}  # kind -> (images, wall s, median round s, rounds)
        self.walls: list[tuple[int, float]] = []  # (images, wall s) of every cell done
        self.started: dict[str, float] = {}
        self.said = -math.inf

    def start(self, nodeid: str) -> None:
        self.started[nodeid] = time.perf_counter()

    def finish(self, nodeid: str, rounds: tuple[float, int] | None) -> str | None:
        """Note a finished cell (its median round and round count, if it timed any); returns a line to print, if due."""
        if nodeid not in self.pending or nodeid not in self.started:
            return None
        kind, images = self.pending.pop(nodeid)
        wall = time.perf_counter() - self.started.pop(nodeid)
        self.walls.append((images, wall))
        if rounds is not None and images > 1 and images >= self.done.get(kind, (0,))[0]:
            self.done[kind] = (images, wall, *rounds)
        now = time.perf_counter()
        if len(self.walls) < ESTIMATE_AFTER_CELLS or not self.pending or now - self.said < ESTIMATE_EVERY_S:
            return None
        self.said = now
        left = sum(self.predict(kind, images) for kind, images in self.pending.values())
        return (
            f"image-storage: {len(self.walls)} cells done, {len(self.pending)} to go: about "
            f"{_minutes(left)} left (estimated from the cells so far)"
        )

    def predict(self, kind: tuple, images: int) -> float:
        """Seconds of wall time the cell ``kind`` at ``images`` images is expected to take."""
        if kind not in self.done or images == 1:
            alike = [wall for count, wall in self.walls if count == images] or [wall for _, wall in self.walls]
            return max(self.max_time, sum(alike) / len(alike))
        seen_images, wall, median, rounds = self.done[kind]
        scale = images / seen_images
        untimed = max(0.0, wall - (rounds + 1) * median) * scale
        median *= scale
        rounds = min(self.max_rounds, max(self.min_rounds, math.ceil(self.max_time / max(median, 1e-9))))
        return untimed + (rounds + 1) * median


def _kind(item: pytest.Item) -> tuple[tuple, int]:
    params = getattr(item, "callspec", None)
    params = params.params if params else {}
    other = tuple(sorted((name, str(value)) for name, value in params.items() if name not in ("method", "cutoff")))
    return (getattr(item, "originalname", item.name), params.get("method"), other), int(params.get("cutoff", 1))


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
