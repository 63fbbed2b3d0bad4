"""`python -m reports history` on a synthetic history (tests/history_fixture.py): the injected steps are found
exactly, A/A histories stay quiet, history.json follows docs/reports.md, and the command's files and errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from reports.changepoints import find_steps
from reports.cli import main as cli_main
from reports.history import build_history, group_commits
from reports.results import load_run
from tests.history_fixture import COMMITS, RUNS, STEPS, write_history

pytest.importorskip("ruptures", reason="pip install 'image-storage-bench[history]'")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """The fixture history run through the command once, with the default settings."""
    root = tmp_path_factory.mktemp("history")
    write_history(root / "runs")
    assert cli_main(["history", str(root / "runs"), "--out", str(root / "out")]) == 0
    return root / "out"


def found(document: dict, mode: str) -> dict[str, int]:
    """Cell label -> commit number (from 1) of every step in history.json, for one mode."""
    return {cell["cell"]: group["commit"] + 1 for group in document["steps"][mode] for cell in group["cells"]}


def test_injected_steps_are_found_exactly(written):
    document = json.loads((written / "history.json").read_text(encoding="utf-8"))
    assert found(document, "raw") == {label: commit for label, (commit, _) in STEPS.items()}
    groups = {group["commit"] + 1: group["cells"] for group in document["steps"]["raw"]}
    assert [group["commit"] + 1 for group in document["steps"]["raw"]] == [21, 12]  # newest first
    assert len(groups[12]) == 3 and len(groups[21]) == 1  # the cells that moved together
    for cell in (*groups[12], *groups[21]):
        factor = STEPS[cell["cell"]][1]
        assert cell["ci"][0] < factor < cell["ci"][1] and cell["p_value"] < 0.01
        assert cell["after"] / cell["before"] == pytest.approx(cell["ratio"])


def test_floor_normalised_steps_are_injected_ones(written):
    """Over floors the floor's noise adds to the cell's: no other step, at the injected commit or next to it; here
    the 8 % step of read_random hdf5 (p 0.014 over its floor) stays below the default alpha of 0.01."""
    document = json.loads((written / "history.json").read_text(encoding="utf-8"))
    steps = found(document, "floor")
    assert set(steps) == set(STEPS) - {"read_random hdf5 n=500 32x32x3 b32-w1-warm"}
    assert all(abs(steps[label] - STEPS[label][0]) <= 1 for label in steps)


def test_aa_histories_false_step_rate(tmp_path):
    """Four A/A histories (docs/ci.md measured more): within the target of 1 false step per 100 cell-histories."""
    false_steps, cells = {"raw": 0, "floor": 0}, {"raw": 0, "floor": 0}
    for seed in (100, 101, 102, 103):
        history = build_history([load_run(path) for path in write_history(tmp_path / str(seed), seed=seed, steps={})])
        steps = find_steps(history)
        for mode in false_steps:
            cells[mode] += sum(1 for cell in history.cells if cell.points[mode])
            false_steps[mode] += sum(len(found_steps) for found_steps in steps[mode].values())
    assert false_steps["raw"] <= cells["raw"] / 100, false_steps
    assert false_steps["floor"] <= cells["floor"] / 100, false_steps


def test_history_json_schema(written):
    document = json.loads((written / "history.json").read_text(encoding="utf-8"))
    assert document["schema"] == "image-storage-bench/history/1"
    assert set(document["settings"]) == {"alpha", "threshold", "permutations", "seed", "normalise", "min_segment"}
    commits = document["commits"]
    assert len(commits) == COMMITS and all(len(commit["runs"]) == RUNS for commit in commits)
    assert [commit["time"] for commit in commits] == sorted(commit["time"] for commit in commits)
    assert set(commits[0]) == {"id", "short", "time", "dirty", "runs"}
    assert set(commits[0]["runs"][0]) == {"path", "datetime", "label"}
    for cell in document["cells"]:
        assert set(cell) == {"id", "operation", "method", "n_images", "image_shape", "variant", "series"}
        assert len(cell["series"]["raw"]) == COMMITS and len(cell["series"]["floor"]) in (0, COMMITS)
        for point in cell["series"]["raw"]:
            assert point["lo"] <= point["value"] <= point["hi"] and len(point["runs"]) == RUNS
    floored = [cell["id"] for cell in document["cells"] if not cell["series"]["floor"]]
    assert floored == ["floor floor-memcpy n=100 32x32x3", "floor floor-memcpy n=500 32x32x3"]


def test_commits_are_ordered_by_commit_time_not_by_file(tmp_path):
    paths = write_history(tmp_path, commits=4, steps={})
    shuffled = random.Random(1).sample(paths, len(paths))
    commits = group_commits([load_run(path) for path in shuffled])
    assert [len(commit.runs) for commit in commits] == [RUNS] * 4
    assert [commit.runs[0].path.name[:4] for commit in commits] == ["0001", "0002", "0003", "0004"]


def test_commits_without_time_or_id_still_order(tmp_path):
    """A naive commit time counts as UTC; a run without commit_info.time goes by its start, one without an id
    stands alone."""
    paths = write_history(tmp_path, commits=3, steps={})
    for path, change in zip(paths[::3], ({"time": "2026-11-01T01:00:00"}, {"time": None}, {"id": None})):
        document = json.loads(path.read_text(encoding="utf-8"))
        document["commit_info"].update(change)
        path.write_text(
            json.dumps(
                {**document, "commit_info": {k: v for k, v in document["commit_info"].items() if v is not None}}
            ),
            encoding="utf-8",
        )
    commits = group_commits([load_run(path) for path in paths])
    assert [len(commit.runs) for commit in commits] == [3, 3, 1, 2]
    assert commits[2].id.startswith("unknown:") and commits[2].runs[0].path == paths[6]


def test_command_writes_every_file_self_contained(written):
    for name in ("history.json", "history.md", "history.html", "report.md", "report.html"):
        assert (written / name).stat().st_size > 0, name
    markdown = (written / "history.md").read_text(encoding="utf-8")
    assert markdown.index("commit 21 of 30") < markdown.index("commit 12 of 30")
    for name in ("history.html", "report.html"):
        page = (written / name).read_text(encoding="utf-8")
        assert "src=" not in page and "<link" not in page and "@import" not in page, name  # nothing fetched
    report = (written / "report.html").read_text(encoding="utf-8")
    assert report.count('<figure class="chart"><svg') == len(list(written.glob("*.svg")))
    assert "<h2>Run: " in report and "<table>" in report


def test_missing_input_exits_2_with_one_line(tmp_path, capsys):
    assert cli_main(["history", str(tmp_path / "none.json"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "none.json: no such file or directory" in error[0]
    assert not (tmp_path / "out").exists()


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(SystemExit) as caught:
        cli_main(["history", str(tmp_path), "--alpha", "2"])
    assert caught.value.code == 2
